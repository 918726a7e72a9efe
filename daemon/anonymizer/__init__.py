"""The anonymizer: objects and kernels from a label map, then the paper's mask-symmetric blur."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from daemon.anonymizer.cpu import AnonymizedFrame, CpuAnonymizer
from daemon.config import BlurConfig

__all__ = ["AnonymizedFrame", "CpuAnonymizer", "create_anonymizer"]


def create_anonymizer(analyzer: Any, class_ids: Sequence[int], blur: BlurConfig) -> Any:
    """The anonymizer on the analyzer's device: the GPU one next to the TensorRT analyzer (the
    frame goes up once and comes down once), else the CPU one."""
    from daemon.gpu.backend import device_anonymizer_for

    return device_anonymizer_for(analyzer, class_ids, blur) or CpuAnonymizer(class_ids, blur)
