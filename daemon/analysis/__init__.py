"""Analysis: the model manifest, the multi-scale skeleton and the CPU backends (ONNX Runtime,
OpenVINO). The Analyzer Protocol is in daemon.interfaces; daemon.backends picks the backend."""

from daemon.analysis.manifest import Manifest, class_ids, load_manifest

__all__ = ["Manifest", "class_ids", "load_manifest"]
