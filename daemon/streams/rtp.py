"""H.264 over RTP: the encoder of one camera's published stream and the packets it makes.

`H264RtpEncoder` runs `appsrc ! x264enc/nvh264enc ! rtph264pay ! appsink` and hands whole
access units (`RtpFrame`: every RTP packet of one frame, the marker bit on the last) to a
callback. The RTP timestamps are the buffer timestamps the caller gives (the camera's), so a
viewer sees the camera's cadence. Viewers share one payloader; each viewer renumbers the
sequence numbers of what it is sent (`renumbered`), so frames dropped for one viewer are no
packet loss for it.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.errors import StreamError
from daemon.streams.gst import gst, require_elements

log = logging.getLogger(__name__)

PAYLOAD_TYPE = 96
CLOCK_RATE = 90_000
_MTU = 1400
_PULL_TIMEOUT_S = 0.25
_MAX_RAW_FRAMES = 30  # frames waiting for the encoder; a stuck one loses the oldest
_IDR, _SPS, _STAP_A, _FU_A = 5, 7, 24, 28


@dataclass(frozen=True)
class RtpFrame:
    """Every RTP packet of one encoded frame, in order."""

    packets: tuple[bytes, ...]
    key: bool  # starts with SPS/PPS and an IDR picture: a viewer can start decoding here
    timestamp: int  # the RTP timestamp (90 kHz) shared by its packets
    pts_ns: int | None = None  # the buffer timestamp it was encoded with

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.packets)


def _payload_offset(packet: bytes) -> int:
    csrc = packet[0] & 0x0F
    offset = 12 + 4 * csrc
    if packet[0] & 0x10:  # a header extension
        offset += 4 + 4 * int.from_bytes(packet[offset + 2: offset + 4], "big")
    return offset


def starts_key_unit(packet: bytes) -> bool:
    """Whether an RTP H.264 packet (RFC 6184) carries an SPS or the start of an IDR slice."""
    if len(packet) < 14:
        return False
    offset = _payload_offset(packet)
    if offset + 1 >= len(packet):
        return False
    nal = packet[offset] & 0x1F
    if nal == _STAP_A and offset + 3 < len(packet):
        nal = packet[offset + 3] & 0x1F
    elif nal == _FU_A:
        if not packet[offset + 1] & 0x80:  # not the first fragment
            return False
        nal = packet[offset + 1] & 0x1F
    return nal in (_IDR, _SPS)


def rtp_timestamp(packet: bytes) -> int:
    return int.from_bytes(packet[4:8], "big")


def rtp_marker(packet: bytes) -> bool:
    return bool(packet[1] & 0x80)


def renumbered(packets: tuple[bytes, ...], first_seq: int) -> list[bytes]:
    """The packets with consecutive sequence numbers from `first_seq` (mod 2^16)."""
    out = []
    for index, packet in enumerate(packets):
        copy = bytearray(packet)
        copy[2:4] = ((first_seq + index) & 0xFFFF).to_bytes(2, "big")
        out.append(bytes(copy))
    return out


def encoder_description(fps: float) -> str:
    """The H.264 encoder: nvh264enc where present, else x264enc (no NVENC on an H100)."""
    gop = max(1, round(fps))
    Gst = gst()[0]
    if Gst.ElementFactory.find("nvh264enc") is not None:
        return f"nvh264enc zerolatency=true gop-size={gop} bitrate=4000"
    return (f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=4000"
            " threads=2")


@dataclass(frozen=True)
class StreamFormat:
    """What the SDP of a stream says about it (from the payloader's caps)."""

    sprop: str | None  # sprop-parameter-sets: base64 SPS,PPS
    profile_level_id: str | None


class H264RtpEncoder:
    """One encoder pipeline; `push(i420, width, height, pts_ns)` from one thread, frames out
    through `on_frame` from the encoder's own thread. `request_key_unit()` makes the next frame
    a keyframe (a viewer is waiting for one)."""

    def __init__(self, name: str, fps: float, on_frame: Callable[[RtpFrame], None]) -> None:
        require_elements("appsrc", "rtph264pay", "appsink")
        self.name = name
        self._fps = fps
        self._on_frame = on_frame
        # one SSRC and timestamp origin for the life of the stream, across encoder rebuilds
        self.ssrc = secrets.randbits(32)
        self._timestamp_offset = secrets.randbits(31)
        self._size: tuple[int, int] | None = None
        self._pipeline: Any = None
        self._appsrc: Any = None
        self._sink: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._format: StreamFormat | None = None
        self._format_ready = threading.Event()
        self._lock = threading.Lock()

    @property
    def format(self) -> StreamFormat | None:
        return self._format

    def wait_format(self, timeout: float) -> StreamFormat | None:
        self._format_ready.wait(timeout)
        return self._format

    def _build(self, width: int, height: int, first_pts: int) -> None:
        Gst = gst()[0]
        num, den = Gst.util_double_to_fraction(self._fps if self._fps > 0 else 30.0)
        pipeline = Gst.parse_launch(
            f"appsrc name=src is-live=true format=time block=false max-bytes=0"
            f" max-buffers={_MAX_RAW_FRAMES} leaky-type=downstream"
            f" caps=video/x-raw,format=I420,width={width},height={height},framerate={num}/{den}"
            f" ! {encoder_description(self._fps)}"
            f" ! rtph264pay pt={PAYLOAD_TYPE} config-interval=1 mtu={_MTU} ssrc={self.ssrc}"
            f" timestamp-offset={self._timestamp_offset}"
            " ! appsink name=sink sync=false emit-signals=false max-buffers=0"
        )
        if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise StreamError(f"stream {self.name}: cannot start the H.264 encoder")
        self._pipeline = pipeline
        self._appsrc = pipeline.get_by_name("src")
        self._sink = pipeline.get_by_name("sink")
        self._size = (width, height)
        self._stop.clear()
        self._thread = threading.Thread(target=self._pull, args=(self._sink, first_pts),
                                        name=f"encode-{self.name}", daemon=True)
        self._thread.start()

    def push(self, i420: bytes, width: int, height: int, pts_ns: int) -> None:
        """Encode one frame (I420 in GStreamer's layout). A new size rebuilds the pipeline."""
        Gst = gst()[0]
        with self._lock:
            if self._size != (width, height):
                if self._size is not None:
                    log.info("stream %s: output size %dx%d -> %dx%d, encoder rebuilt",
                             self.name, *self._size, width, height)
                self._teardown()
                self._build(width, height, pts_ns)
            buffer = Gst.Buffer.new_wrapped(i420)
            buffer.pts = pts_ns
            buffer.duration = int(Gst.SECOND / (self._fps if self._fps > 0 else 30.0))
            self._appsrc.emit("push-buffer", buffer)

    def request_key_unit(self) -> None:
        Gst = gst()[0]
        with self._lock:
            sink = self._sink
        if sink is None:
            return
        structure = Gst.Structure.new_from_string(
            "GstForceKeyUnit, all-headers=(boolean)true, count=(uint)0")
        sink.send_event(Gst.Event.new_custom(Gst.EventType.CUSTOM_UPSTREAM, structure))

    def _pull(self, sink: Any, first_pts: int) -> None:
        """Whole frames out. Their pts are the caller's: the encoder shifts timestamps (x264enc
        by 1000 hours) but keeps their steps and order, and its first frame is the first pushed."""
        Gst = gst()[0]
        packets: list[bytes] = []
        key = False
        pts: int | None = None
        shift: int | None = None
        while not self._stop.is_set():
            sample = sink.emit("try-pull-sample", int(_PULL_TIMEOUT_S * Gst.SECOND))
            if sample is None:
                if sink.get_property("eos"):
                    return
                continue
            if self._format is None:
                self._note_format(sample.get_caps())
            buffer = sample.get_buffer()
            if not packets:
                pts = buffer.pts if buffer.pts != Gst.CLOCK_TIME_NONE else None
                if pts is not None:
                    shift = pts - first_pts if shift is None else shift
                    pts -= shift
            packet = buffer.extract_dup(0, buffer.get_size())
            key = key or starts_key_unit(packet)
            packets.append(packet)
            if rtp_marker(packet):
                frame = RtpFrame(tuple(packets), key, rtp_timestamp(packets[0]), pts)
                packets, key = [], False
                try:
                    self._on_frame(frame)
                except Exception:
                    log.exception("stream %s: sending a frame to viewers failed", self.name)

    def _note_format(self, caps: Any) -> None:
        structure = caps.get_structure(0)
        self._format = StreamFormat(
            sprop=structure.get_string("sprop-parameter-sets"),
            profile_level_id=structure.get_string("profile-level-id"),
        )
        self._format_ready.set()

    def _teardown(self) -> None:
        Gst = gst()[0]
        self._stop.set()
        if self._pipeline is not None:
            self._appsrc.emit("end-of-stream")
            self._pipeline.set_state(Gst.State.NULL)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self._pipeline = self._appsrc = self._sink = self._thread = None
        self._size = None
        self._format = None
        self._format_ready.clear()

    def close(self) -> None:
        with self._lock:
            self._teardown()
