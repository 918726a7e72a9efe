"""Media files: image (OpenCV) and video (PyAV) readers and writers, with atomic outputs."""
