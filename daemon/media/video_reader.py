"""Video files in (mp4, mkv, avi, mov): BGR frames with their timestamps, via PyAV."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias, cast

import av
import av.container
import av.stream
import numpy as np

from daemon.errors import MediaError
from daemon.media.matroska import segment_missing_bytes
from daemon.types import Image

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # PyAV's packets are generic in its stubs only
    AudioPacket: TypeAlias = av.Packet[av.audio.stream.AudioStream]
    VideoPacket: TypeAlias = av.Packet[av.video.stream.VideoStream]

AudioSink = Callable[["AudioPacket"], None]

_DEFAULT_RATE = Fraction(25)


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame in display order; its time is `pts * time_base` seconds."""

    image: Image  # H x W x 3 BGR
    pts: int
    time_base: Fraction
    index: int


@dataclass(frozen=True)
class VideoInfo:
    """What a writer needs to reproduce the input's geometry and timing."""

    width: int
    height: int
    time_base: Fraction
    average_rate: Fraction
    frames: int  # as the container declares it; 0 when unknown
    codec: str
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "avi"


def _reason(exc: av.FFmpegError) -> str:
    return exc.strerror or str(exc)


class VideoReader:
    """Decode the first video stream of a file; a context manager.

    Frames come with the container's pts, except where the container holds none worth keeping:
    AVI stores only decode order (FFmpeg's AVI pts are off by one and shuffled around B-frames),
    so AVI frames are numbered at the stream's constant rate; elsewhere a missing or
    non-increasing pts is replaced by the previous one plus one frame (logged once).

    A decode error, or a stream that ends before the frame count its container declares, is a
    MediaError: a truncated file must not pass for a complete one.
    """

    def __init__(self, path: Path, *, audio: bool = False) -> None:
        self.path = path
        self._container = _open(path)
        try:
            if not self._container.streams.video:
                raise MediaError(f"{path}: no video stream")
            self._video = self._container.streams.video[0]
            self._video.thread_type = "AUTO"
            self.info = self._probe()
            self._decoded = 0
            self._check_size()
        except BaseException:
            self._container.close()
            raise
        streams = self._container.streams.audio
        self.audio_stream: av.audio.stream.AudioStream | None = (
            streams[0] if audio and streams else None
        )

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def _probe(self) -> VideoInfo:
        stream = self._video
        ctx = stream.codec_context
        if stream.time_base is None or not ctx.width or not ctx.height:
            raise MediaError(f"{self.path}: video stream without size or time base")
        rate = stream.average_rate or stream.guessed_rate or _DEFAULT_RATE
        return VideoInfo(
            width=ctx.width,
            height=ctx.height,
            time_base=Fraction(stream.time_base),
            average_rate=Fraction(rate),
            frames=stream.frames or 0,
            codec=ctx.name,
            container=self._container.format.name,
        )

    def _check_size(self) -> None:
        if not self.info.container.startswith("matroska"):
            return
        missing = segment_missing_bytes(self.path)
        if missing:
            raise MediaError(
                f"{self.path}: truncated video: {missing} bytes short of the size its "
                "Matroska header declares"
            )

    def frames(self, audio_sink: AudioSink | None = None) -> Iterator[VideoFrame]:
        """Yield every frame; hand each audio packet to `audio_sink` (in file order) if given."""
        audio = self.audio_stream if audio_sink is not None else None
        timing = _Timestamps(self.info, self._video.start_time, self.path)
        self._decoded = 0
        packets = 0
        last_dts: int | None = None
        for packet in self._demux(audio):
            if packet.stream is not self._video:
                if audio_sink is not None and packet.size and packet.dts is not None:
                    # demuxed from the audio stream, the only other stream asked for
                    audio_sink(cast("AudioPacket", packet))
                continue
            if packet.size:
                packets += 1
                last_dts = packet.dts if packet.dts is not None else last_dts
            for frame in self._decode(cast("VideoPacket", packet)):
                index = self._decoded
                # bgr24 is uint8 (PyAV's stubs allow every dtype it can make)
                image = frame.to_ndarray(format="bgr24").astype(np.uint8, copy=False)
                yield VideoFrame(image, timing.pts(frame.pts, index), self.info.time_base, index)
                self._decoded += 1
        self._check_complete(self._decoded, packets, last_dts)

    def segment(self, start: int, end: int | None, first_index: int) -> Iterator[VideoFrame]:
        """Yield the frames shown at `start` <= pts < `end` (None: to the end of the stream),
        decoded from the keyframe at `start`, numbered from `first_index`.

        `start` must be a keyframe's pts (see daemon.batch.segments): decoding restarts there, so
        a segment decodes to the same pixels as the whole stream. Frames before `start` (an open
        GOP's leading frames, which belong to the previous segment) are skipped; decoding stops
        at the first frame at or past `end`, which display order puts after all earlier ones.
        Only for containers with real pts (not AVI); the caller checks the frame count.
        """
        try:
            self._container.seek(start, backward=True, any_frame=False, stream=self._video)
        except av.FFmpegError as exc:
            raise MediaError(f"{self.path}: cannot seek to pts {start}: {_reason(exc)}") from None
        self._decoded = first_index
        for packet in self._demux(None):
            for frame in self._decode(cast("VideoPacket", packet)):
                if frame.pts is None:
                    raise MediaError(f"{self.path}: a frame without pts after pts {start}")
                if frame.pts < start:
                    continue
                if end is not None and frame.pts >= end:
                    return
                image = frame.to_ndarray(format="bgr24").astype(np.uint8, copy=False)
                yield VideoFrame(image, frame.pts, self.info.time_base, self._decoded)
                self._decoded += 1

    def _demux(self, audio: av.stream.Stream | None) -> Iterator[av.Packet[av.stream.Stream]]:
        streams = [self._video] if audio is None else [self._video, audio]
        packets = self._container.demux(*streams)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as exc:
                raise MediaError(
                    f"{self.path}: corrupt or truncated video after {self._decoded} frames: "
                    f"{_reason(exc)}"
                ) from None
            yield packet

    def _decode(self, packet: VideoPacket) -> list[av.VideoFrame]:
        try:
            return packet.decode()
        except av.FFmpegError as exc:
            raise MediaError(
                f"{self.path}: corrupt or truncated video at frame {self._decoded}: "
                f"{_reason(exc)}"
            ) from None

    def _check_complete(self, decoded: int, packets: int, last_dts: int | None) -> None:
        declared = self.info.frames
        if declared <= 0 or packets >= declared:
            return
        if self.info.container == "avi" and last_dts is not None and last_dts + 1 >= declared:
            return  # AVI counts dropped-frame (empty) chunks that FFmpeg never delivers
        raise MediaError(
            f"{self.path}: truncated video: the stream ends after {decoded} of the "
            f"{declared} frames its container declares"
        )


class _Timestamps:
    """Strictly increasing pts for decoded frames (see VideoReader)."""

    def __init__(self, info: VideoInfo, start: int | None, path: Path) -> None:
        self._step = max(1, round(1 / (info.average_rate * info.time_base)))
        self._numbered = info.container == "avi"
        self._start = start or 0
        self._last: int | None = None
        self._path = path
        self._warned = False

    def pts(self, pts: int | None, index: int) -> int:
        if self._numbered:
            value = self._start + index * self._step
        elif pts is None or (self._last is not None and pts <= self._last):
            value = self._start if self._last is None else self._last + self._step
            if not self._warned:
                log.warning(
                    "%s: frame %d has %s pts: timestamps repaired from there on",
                    self._path, index, "no" if pts is None else "a non-increasing",
                )
                self._warned = True
        else:
            value = pts
        self._last = value
        return value


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if path.is_dir():
        raise MediaError(f"{path}: is a directory, not a file")
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: not a readable video: {_reason(exc)}") from None
    except OSError as exc:
        raise MediaError(f"{path}: cannot read: {exc.strerror or exc}") from None
