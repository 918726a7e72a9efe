"""The skeleton every analyzer backend shares: a plan of regions (the full frame, then the
tiles), one inference per region, the privacy-safe merge, and one lock per analyzer.

A backend implements the array hooks (`_to_device`, `_window`, `_pass`, `_merge`, `_to_host`);
the CPU backends keep the defaults (numpy), the TensorRT one works on CuPy arrays. The lock
makes one analyzer safe to share between cameras: a backend's buffers and inference request
serve one call at a time, so two cameras never get each other's masks.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from daemon.analysis.manifest import Manifest
from daemon.analysis.tiling import (
    Tile,
    analysis_plan,
    describe_tiling,
    drop_specks,
    merge_protected,
    protected_lookup,
    speck_area,
)
from daemon.config import TilingConfig
from daemon.errors import ConfigError, EngineError, ModelError
from daemon.types import Image, LabelMap, check_image

_TILING_OFF = TilingConfig.model_validate({"enabled": False})


class MultiScaleAnalyzer:
    """`plan`, `labels` and `region_labels` on top of a backend's single inference pass."""

    backend = "?"  # for the log: "ONNX Runtime (CPU)", "OpenVINO CPU bf16", ...
    parallel = 1  # passes that run concurrently in one _passes call (OpenVINO CPU streams)

    def __init__(
        self, manifest: Manifest, tiling: TilingConfig | None, protected: Sequence[int]
    ) -> None:
        """tiling: the multi-scale option (None: off); `protected`: the class ids to anonymize,
        which win the merge of the tiles."""
        self.manifest = manifest
        self.tiling = tiling if tiling is not None else _TILING_OFF
        if self.tiling.enabled and not protected:
            raise ConfigError("analysis.tiling needs the class ids to anonymize to merge tiles")
        self._protected_table = protected_lookup(tuple(protected))
        self._lock = threading.Lock()
        self._plans: dict[tuple[int, int], tuple[Tile, ...]] = {}

    @property
    def describe(self) -> str:
        return f"{self.backend}, tiling {describe_tiling(self.tiling)}"

    def plan(self, height: int, width: int) -> tuple[Tile, ...]:
        """The regions of one multi-scale analysis of a height x width frame, full frame first."""
        key = (height, width)
        plan = self._plans.get(key)
        if plan is None:
            spec = self.manifest.input
            plan = analysis_plan(height, width, spec.height, spec.width, self.tiling)
            self._plans[key] = plan
        return plan

    def labels(self, frame: Image) -> LabelMap:
        """H x W class ids of every region of the plan merged; EngineError on any failure."""
        _check_frame(frame)
        _full, *tiles = self.plan(*frame.shape[:2])
        with self._lock:
            image = self._to_device(frame)
            labels, *tile_labels = self._passes([image, *(self._window(image, t) for t in tiles)])
            for tile, window_labels in zip(tiles, tile_labels, strict=True):
                self._merge(labels, tile, self._despeckle(window_labels, tile))
            return self._to_host(labels)

    def region_labels(self, frame: Image, region: Tile) -> LabelMap:
        """region.height x region.width class ids of one region of the frame (one pass)."""
        return self.regions_labels(frame, (region,))[0]

    def regions_labels(self, frame: Image, regions: Sequence[Tile]) -> list[LabelMap]:
        """The labels of each region (one pass each; up to `parallel` run concurrently)."""
        _check_frame(frame)
        windows = []
        for region in regions:
            if (region.y < 0 or region.x < 0 or region.y + region.height > frame.shape[0]
                    or region.x + region.width > frame.shape[1]):
                raise EngineError(f"region {region} is outside the {frame.shape[:2]} frame")
            windows.append(
                frame[region.y : region.y + region.height, region.x : region.x + region.width])
        full = self.plan(*frame.shape[:2])[0]
        with self._lock:
            passes = self._passes([self._to_device(w) for w in windows])
            return [self._to_host(labels if region == full else self._despeckle(labels, region))
                    for region, labels in zip(regions, passes, strict=True)]

    def _warm_up(self, model: object) -> None:
        """One pass at load: the first inference allocates and is slow; a broken graph fails
        here, as a ModelError naming `model`."""
        spec = self.manifest.input
        blank = np.zeros((spec.height, spec.width, 3), np.uint8)
        try:
            self._to_host(self._pass(self._to_device(blank)))
        except EngineError as exc:
            raise ModelError(f"model {model}: warm-up run failed: {exc}") from exc

    # --- backend hooks (numpy defaults) ----------------------------------------------------

    def _to_device(self, image: Image) -> Any:
        return image

    def _window(self, image: Any, tile: Tile) -> Any:
        return image[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]

    def _pass(self, image: Any) -> Any:
        """Labels at `image`'s own resolution from one inference (the backend's own arrays)."""
        raise NotImplementedError

    def _passes(self, images: list[Any]) -> list[Any]:
        """`_pass` of each image, in order (a backend may run them concurrently)."""
        return [self._pass(image) for image in images]

    def _merge(self, labels: Any, tile: Tile, tile_labels: Any) -> None:
        merge_protected(labels, tile, tile_labels, self._protected_table)

    def _to_host(self, labels: Any) -> LabelMap:
        host: LabelMap = labels  # the host backends' labels are already numpy LabelMaps
        return host

    def _despeckle(self, tile_labels: Any, tile: Tile) -> Any:
        """A tile's labels without protected specks (tiling.drop_specks)."""
        spec = self.manifest.input
        drop_specks(tile_labels, self._protected_table, speck_area(tile, spec.height, spec.width))
        return tile_labels


def _check_frame(frame: Image) -> None:
    try:
        check_image(frame)
    except ValueError as exc:
        raise EngineError(str(exc)) from exc
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise EngineError(f"expected a non-empty frame, got {frame.shape}")
