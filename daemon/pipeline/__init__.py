"""Per-camera pipeline: ingest -> analysis -> anonymizer -> publisher, failing closed."""
