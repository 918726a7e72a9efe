"""Multi-scale analysis: overlapping native-resolution tiles and their privacy-safe merge.

A 1080p frame squeezed into a 257 px input shrinks a distant person ~4x; a tile the size of
the network input sees the frame at native scale. Tiles are laid out so that neighbours share
at least `overlap` of a tile and the last tile ends at the frame's edge (every tile is a full
input-sized window unless the frame itself is smaller in that direction, then the tile spans it).
With `zoom` > 1 a tile covers input size / zoom frame pixels, stretched to the input: the
network sees the frame magnified (people too small even at native scale, e.g. on a 480 x 360
camera), at about zoom^2 times as many tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from daemon.config import TilingConfig
from daemon.types import LabelMap


@dataclass(frozen=True)
class Tile:
    """A window of the frame: rows y..y+height, columns x..x+width."""

    y: int
    x: int
    height: int
    width: int


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets along one axis: evenly spread, neighbours overlap by >= `overlap` x tile."""
    if length <= tile:
        return [0]
    stride = tile * (1.0 - overlap)
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def frame_tiles(
    height: int, width: int, tile_height: int, tile_width: int, overlap: float
) -> list[Tile]:
    """The tiles covering a height x width frame; [] when one tile would be the whole frame."""
    if height <= tile_height and width <= tile_width:
        return []
    rows = tile_origins(height, tile_height, overlap)
    cols = tile_origins(width, tile_width, overlap)
    return [
        Tile(y, x, min(tile_height, height), min(tile_width, width)) for y in rows for x in cols
    ]


def analysis_tiles(
    height: int, width: int, input_height: int, input_width: int, tiling: TilingConfig
) -> list[Tile]:
    """The tiles `tiling` analyzes on a height x width frame for a network input of
    input_height x input_width ([] when tiling is off or one tile would be the whole frame)."""
    if not tiling.enabled:
        return []
    tile_height = max(1, round(input_height / tiling.zoom))
    tile_width = max(1, round(input_width / tiling.zoom))
    return frame_tiles(height, width, tile_height, tile_width, tiling.overlap)


def protected_lookup(class_ids: tuple[int, ...]) -> np.ndarray:
    """A 256-entry bool table: True for the class ids to anonymize."""
    table = np.zeros(256, dtype=np.bool_)
    table[list(class_ids)] = True
    return table


def merge_protected(
    labels: LabelMap, tile: Tile, tile_labels: LabelMap, protected: np.ndarray
) -> None:
    """Union in place: a tile pixel of a protected class overrides any unprotected label.

    Where both passes name (different) protected classes the earlier one stays: either way the
    pixel is anonymized, which is what privacy needs.
    """
    window = labels[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
    claim = protected[tile_labels] & ~protected[window]
    window[claim] = tile_labels[claim]


def describe_tiling(tiling: TilingConfig) -> str:
    """For the log: 'off' or 'on (overlap 0.25, zoom 2)'."""
    if not tiling.enabled:
        return "off"
    return f"on (overlap {tiling.overlap:g}, zoom {tiling.zoom:g})"
