"""Video files out: H.264 (libx264, yuv420p) with the input's timestamps, written atomically."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import av
import av.container
import av.stream
import cv2
import numpy as np

from daemon.errors import MediaError
from daemon.media.atomic import AtomicPath
from daemon.media.formats import VIDEO_EXTENSIONS
from daemon.media.video_reader import VideoInfo
from daemon.safe import SafeFrame, pixels

if TYPE_CHECKING:
    from daemon.media.video_reader import AudioPacket

log = logging.getLogger(__name__)

DEFAULT_CRF = 18  # visually lossless: the background must look untouched
DEFAULT_PRESET = "medium"
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast",
    "medium", "slow", "slower", "veryslow", "placebo",
)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


class VideoWriter:
    """Encode SafeFrames (BGR; never a plain array) to `path` (mp4, mkv, mov, avi); a context
    manager.

    Each frame keeps the pts (and time base) it had in the input, so frame count, frame rate
    and variable timing survive; AVI holds no timestamps, so there frames are numbered at the
    average rate. Odd sizes are padded by one replicated row/column (4:2:0 needs even sizes).

    Audio: none unless `audio` (the input's audio stream) is given; then its packets are
    copied unchanged, or transcoded to AAC where the output container cannot hold the codec.
    No container metadata is copied (it can hold locations and device names).

    The file is written as `.<name>.partial.<ext>` and renamed only when the block exits
    without an exception; on any failure the partial file is deleted.
    """

    def __init__(
        self,
        path: Path,
        info: VideoInfo,
        *,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        audio: av.audio.stream.AudioStream | None = None,
    ) -> None:
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            known = ", ".join(sorted(VIDEO_EXTENSIONS))
            raise MediaError(f"{path}: not a video extension (known: {known})")
        if not 0 <= crf <= 51:
            raise ValueError(f"expected crf in 0..51, got {crf}")
        if preset not in X264_PRESETS:
            raise ValueError(f"expected an x264 preset {X264_PRESETS}, got {preset!r}")
        self.path = path
        self.info = info
        self._crf = crf
        self._preset = preset
        self._audio_in = audio
        self._target: AtomicPath | None = None
        self._container: av.container.OutputContainer | None = None
        self._count = 0
        self._last_pts: int | None = None
        self._warned_vfr = False

    def __enter__(self) -> VideoWriter:
        self._target = AtomicPath(self.path)
        try:
            self._open(self._target.tmp)
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise

    @property
    def frames_written(self) -> int:
        return self._count

    def _open(self, tmp: Path) -> None:
        info = self.info
        try:
            self._container = av.open(str(tmp), mode="w")
        except (av.FFmpegError, OSError) as exc:
            raise MediaError(f"{self.path}: cannot create: {_reason(exc)}") from None
        self._numbered = self._container.format.name == "avi"
        self._time_base = 1 / info.average_rate if self._numbered else info.time_base
        self._width = info.width + info.width % 2
        self._height = info.height + info.height % 2
        if (self._width, self._height) != (info.width, info.height):
            log.warning(
                "%s: odd frame size %dx%d padded to %dx%d (H.264 4:2:0 needs even sizes)",
                self.path, info.width, info.height, self._width, self._height,
            )
        try:
            stream = self._container.add_stream(
                "libx264",
                rate=info.average_rate,
                options={"crf": str(self._crf), "preset": self._preset},
            )
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"{self.path}: cannot set up the H.264 encoder: {exc}") from None
        stream.width = self._width
        stream.height = self._height
        stream.pix_fmt = "yuv420p"
        stream.time_base = self._time_base
        stream.codec_context.time_base = self._time_base
        self._video = stream
        self._audio_out: av.audio.stream.AudioStream | None = None
        self._audio_copy = False
        if self._audio_in is not None:
            self._add_audio(self._audio_in)

    def _add_audio(self, source: av.audio.stream.AudioStream) -> None:
        container = self._open_container()
        name = source.codec_context.name
        if name in container.supported_codecs:
            self._audio_out = container.add_stream_from_template(source)
            self._audio_copy = True
            log.debug("%s: copying %s audio", self.path, name)
            return
        log.info("%s: %s audio cannot go into %s: transcoding to AAC",
                 self.path, name, self.path.suffix)
        self._audio_out = container.add_stream(
            "aac", rate=source.codec_context.sample_rate, layout=source.codec_context.layout
        )

    def write(self, frame: SafeFrame, pts: int) -> None:
        """Encode one H x W x 3 BGR frame shown at `pts` (in the input's time base).

        Only a SafeFrame (daemon.safe): a plain array, which may be a raw frame, is a TypeError.
        """
        image = pixels(frame, "VideoWriter.write()")
        if image.shape != (self.info.height, self.info.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"expected a {self.info.height} x {self.info.width} x 3 uint8 frame, "
                f"got {image.shape} {image.dtype}"
            )
        if (self._width, self._height) != (self.info.width, self.info.height):
            padded = cv2.copyMakeBorder(
                image, 0, self._height - self.info.height, 0, self._width - self.info.width,
                cv2.BORDER_REPLICATE,
            )
            image = padded.astype(np.uint8, copy=False)  # cv2's stubs lose the dtype: uint8
        picture = av.VideoFrame.from_ndarray(image, format="bgr24")
        picture.pts = self._out_pts(pts)
        picture.time_base = self._time_base
        self._mux(self._video.encode(picture))
        self._count += 1

    def _out_pts(self, pts: int) -> int:
        if not self._numbered:
            return pts
        step = round(1 / (self.info.average_rate * self.info.time_base))
        if self._last_pts is not None and pts - self._last_pts != step and not self._warned_vfr:
            log.warning("%s: variable frame timing cannot be kept in AVI: frames are "
                        "written at a constant %s fps", self.path, self.info.average_rate)
            self._warned_vfr = True
        self._last_pts = pts
        return self._count

    def write_audio(self, packet: AudioPacket) -> None:
        """Copy (or transcode) one packet of the audio stream given at construction."""
        if self._audio_out is None:
            raise ValueError("this writer was created without an audio stream")
        if self._audio_copy:
            packet.stream = self._audio_out
            self._mux([packet])
            return
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            raise MediaError(
                f"{self.path}: cannot decode the input audio: {_reason(exc)}"
            ) from None
        for frame in frames:
            frame.pts = None  # the encoder counts samples; input gaps are not worth a failure
            self._mux(self._audio_out.encode(frame))

    def _mux(self, packets: Sequence[av.Packet[Any]]) -> None:  # of either stream
        container = self._open_container()
        try:
            container.mux(packets)
        except av.FFmpegError as exc:
            raise MediaError(f"{self.path}: cannot write: {_reason(exc)}") from None

    def _finish(self) -> None:
        container = self._open_container()
        try:
            self._mux(self._video.encode(None))
            if self._audio_out is not None and not self._audio_copy:
                self._mux(self._audio_out.encode(None))
            container.close()
        except av.FFmpegError as exc:
            raise MediaError(f"{self.path}: cannot finish the file: {_reason(exc)}") from None
        self._container = None
        if self._count == 0:
            raise MediaError(f"{self.path}: no frames to write")
        if self._target is not None:
            self._target.commit()

    def _open_container(self) -> av.container.OutputContainer:
        if self._container is None:
            raise RuntimeError(f"{self.path}: writer not open (use it as a context manager)")
        return self._container

    def _abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except av.FFmpegError as exc:  # already failing: the original error matters
                log.debug("%s: closing after a failure: %s", self.path, exc)
            self._container = None
        if self._target is not None:
            self._target.discard()
