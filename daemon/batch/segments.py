"""Long videos cut at keyframes into segments that workers anonymize apart, and joined again by
remuxing the encoded segments (no second encode)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av

from daemon.errors import MediaError
from daemon.filejob import FileOptions, FrameGuard, write_frames
from daemon.media.atomic import atomic_output
from daemon.media.video_reader import VideoReader
from daemon.media.video_writer import VideoWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """Frames shown at `start` <= pts < `end` (None: to the end): `frames` of them, the first
    being frame number `first_frame` of the video."""

    start: int
    end: int | None
    first_frame: int
    frames: int


@dataclass(frozen=True)
class Packets:
    """The video stream's packets in decode order, without decoding them."""

    pts: tuple[int, ...]
    keyframe: tuple[bool, ...]
    time_base: Fraction


def scan(path: Path) -> Packets | None:
    """The packets' pts and keyframe flags; None where segmenting is not safe (AVI keeps no
    pts, a packet without pts, repeated pts, a stream shorter than declared, a demux error):
    such a video is one unit, read by the file path's reader and its checks."""
    try:
        with av.open(str(path)) as container:
            if container.format.name == "avi" or not container.streams.video:
                return None
            stream = container.streams.video[0]
            if stream.time_base is None:
                return None
            pts: list[int] = []
            keys: list[bool] = []
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                if packet.pts is None:
                    return None
                pts.append(packet.pts)
                keys.append(bool(packet.is_keyframe))
            declared = stream.frames or 0
            time_base = Fraction(stream.time_base)
    except (av.FFmpegError, OSError) as exc:
        log.info("%s: not segmented (%s)", path, exc)
        return None
    if len(set(pts)) != len(pts) or (declared and len(pts) < declared):
        return None
    return Packets(tuple(pts), tuple(keys), time_base)


def split(packets: Packets, seconds: float) -> list[Segment]:
    """Segments of at least `seconds` (the last may be shorter), each starting at a keyframe
    that nothing shown later precedes in decode order: decoding from it gives the same frames
    as decoding the whole stream. One segment when no such keyframe exists."""
    pts = packets.pts
    if not pts:
        return []
    first = min(pts)
    starts = [first]
    shown_before = -(2**63)  # the latest pts among the packets decoded so far
    for position, (value, key) in enumerate(zip(pts, packets.keyframe, strict=True)):
        if (position and key and value > shown_before
                and (value - starts[-1]) * packets.time_base >= seconds):
            starts.append(value)
        shown_before = max(shown_before, value)
    if not packets.keyframe[0] or pts[0] != first:
        return [Segment(first, None, 0, len(pts))]  # frames before the first keyframe
    ordered = sorted(pts)
    segments = []
    done = 0
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else None
        count = sum(1 for value in ordered if value >= start and (end is None or value < end))
        segments.append(Segment(start, end, done, count))
        done += count
    return segments


def write_segment(
    source: Path, output: Path, segment: Segment, guard: FrameGuard, options: FileOptions
) -> None:
    """Anonymize one segment into its own file (atomically, starting with a keyframe, as every
    encode does); MediaError when the segment does not hold the frames the scan found.

    The file's pts start at 0 (`join` adds `segment.start` back): MP4 would store a later
    start as an edit list in milliseconds, which moves every pts of a fine time base.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    with VideoReader(source) as reader, VideoWriter(
        output, reader.info, crf=options.crf, preset=options.preset
    ) as writer:
        frames = reader.segment(segment.start, segment.end, segment.first_frame)
        write_frames((replace(frame, pts=frame.pts - segment.start) for frame in frames),
                     guard, writer)
        if writer.frames_written != segment.frames:
            raise MediaError(
                f"{source}: segment at pts {segment.start} decoded {writer.frames_written} "
                f"of its {segment.frames} frames"
            )


def join(parts: Sequence[Path], segments: Sequence[Segment], time_base: Fraction,
         output: Path) -> int:
    """Concatenate the encoded segments into `output` (atomically) by remuxing their packets,
    each shifted back to its segment's start (`time_base`: the input's): no re-encode; frame
    count, pts and time base are the input's.

    MediaError when a segment does not start with a keyframe, holds another number of frames
    than expected, was encoded with other codec parameters than the first, or would overlap
    the previous one in decode order."""
    total = 0
    with atomic_output(output) as tmp, av.open(str(tmp), mode="w") as dst:
        out_stream = None
        extradata: bytes | None = None
        last_dts: Fraction | None = None
        for part, segment in zip(parts, segments, strict=True):
            with av.open(str(part)) as src:
                stream = src.streams.video[0]
                if stream.time_base is None:
                    raise MediaError(f"{part}: no time base")
                if out_stream is None:
                    out_stream = dst.add_stream_from_template(stream)
                    out_stream.time_base = stream.time_base
                    extradata = stream.codec_context.extradata
                elif stream.codec_context.extradata != extradata:
                    raise MediaError(f"{part}: encoded with other parameters than the first "
                                     "segment: cannot join without re-encoding")
                shift = segment.start * time_base / Fraction(stream.time_base)
                if shift.denominator != 1:
                    raise MediaError(f"{part}: time base {stream.time_base} cannot hold the "
                                     f"start {segment.start} x {time_base}")
                count = 0
                for packet in src.demux(stream):
                    if not packet.size:
                        continue
                    if count == 0 and not packet.is_keyframe:
                        raise MediaError(f"{part}: does not start with a keyframe")
                    if packet.pts is not None:
                        packet.pts += int(shift)
                    if packet.dts is not None:
                        packet.dts += int(shift)
                        dts = packet.dts * Fraction(stream.time_base)
                        if last_dts is not None and dts <= last_dts:
                            raise MediaError(f"{part}: decode times overlap the previous "
                                             "segment's")
                        last_dts = dts
                    packet.stream = out_stream
                    dst.mux(packet)
                    count += 1
                if count != segment.frames:
                    raise MediaError(f"{part}: {count} frames, expected {segment.frames}")
                total += count
    return total
