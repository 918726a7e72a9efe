"""`anonymizer demo`: the daemon on a built-in test camera serving the bundled sample clip."""
