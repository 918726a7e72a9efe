"""Camera streams: GStreamer RTSP ingest (one thread per camera) and the in-process RTSP server."""
