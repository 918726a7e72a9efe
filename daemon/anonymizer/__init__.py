"""The anonymizer: objects and kernels from a label map, then the paper's mask-symmetric blur.
The Anonymizer Protocol is in daemon.interfaces; daemon.backends picks the implementation."""

from daemon.anonymizer.cpu import AnonymizedFrame, CpuAnonymizer

__all__ = ["AnonymizedFrame", "CpuAnonymizer"]
