"""Matroska completeness: does the file hold every byte its Segment header declares?

Matroska declares no frame count, and FFmpeg ends a cut-off file quietly; the size of the
Segment element (written when the muxer finishes) is what gives a truncated file away.
"""

from __future__ import annotations

from pathlib import Path

_EBML_ID = 0x1A45DFA3
_SEGMENT_ID = 0x18538067


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-size integer at `pos`: (value, next pos), or None if malformed.

    A size whose bits are all ones means "unknown size" and comes back as -1.
    """
    if pos >= len(data) or data[pos] == 0:
        return None
    first = data[pos]
    length = 9 - first.bit_length()
    if pos + length > len(data):
        return None
    value = first if keep_marker else first & (0xFF >> length)
    for byte in data[pos + 1 : pos + length]:
        value = (value << 8) | byte
    if not keep_marker and value == (1 << (7 * length)) - 1:
        value = -1
    return value, pos + length


def _element(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(id, size or -1 for unknown, data start) of the element at `pos`, or None."""
    ident = _vint(data, pos, keep_marker=True)
    if ident is None:
        return None
    size = _vint(data, ident[1], keep_marker=False)
    if size is None:
        return None
    return ident[0], size[0], size[1]


def segment_missing_bytes(path: Path) -> int:
    """How many bytes the first Segment declares beyond the end of the file (0: complete,
    unknown size as live recorders write it, or not a Matroska file)."""
    with path.open("rb") as file:
        head = file.read(4096)
        file.seek(0, 2)
        file_size = file.tell()
    header = _element(head, 0)
    if header is None or header[0] != _EBML_ID or header[1] < 0:
        return 0
    segment = _element(head, header[2] + header[1])
    if segment is None or segment[0] != _SEGMENT_ID or segment[1] < 0:
        return 0
    return max(0, segment[2] + segment[1] - file_size)
