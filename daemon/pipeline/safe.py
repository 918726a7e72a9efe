"""Moved to daemon.safe: remove this shim once daemon/pipeline/camera.py imports daemon.safe."""
from daemon.safe import SafeFrame, anonymized, fail_closed, placeholder

__all__ = ["SafeFrame", "anonymized", "fail_closed", "placeholder"]
