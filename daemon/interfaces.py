"""The two seams every stage is written against: one Analyzer and one Anonymizer Protocol.

Backends (ONNX Runtime, OpenVINO, TensorRT + CuPy) implement them; `daemon.backends` is the one
place that picks which, and the pipeline, the file command and the tools use only these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from daemon.types import Image, LabelMap

if TYPE_CHECKING:
    from daemon.analysis.manifest import Manifest
    from daemon.analysis.tiling import Tile
    from daemon.anonymizer.cpu import AnonymizedFrame


class Analyzer(Protocol):
    """Labels every pixel of a frame with a class id of `manifest`. Safe to share between
    threads (cameras): calls are serialised per analyzer."""

    manifest: Manifest
    parallel: int  # regions one regions_labels call runs concurrently (1: one after another)

    def plan(self, height: int, width: int) -> tuple[Tile, ...]:
        """The regions of one multi-scale analysis of such a frame, the full frame first."""
        ...

    def labels(self, frame: Image) -> LabelMap:
        """H x W uint8 class ids for an H x W x 3 BGR frame, every region of the plan merged
        (protected classes win); EngineError on failure."""
        ...

    def regions_labels(self, frame: Image, regions: Sequence[Tile]) -> list[LabelMap]:
        """region.height x region.width class ids of each region of the plan (a pass each)."""
        ...


class Anonymizer(Protocol):
    """Blurs the objects of a label map (DESIGN.md 2); never changes pixels outside them."""

    def anonymize(self, frame: Image, labels: LabelMap) -> AnonymizedFrame: ...
