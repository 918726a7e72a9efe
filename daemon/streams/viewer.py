"""What one playing viewer is owed: a short, keyframe-aware queue of frames.

The encoder offers every frame to every viewer (`offer`, never blocks); the viewer's own sender
thread takes them (`take`). A viewer that falls more than `max_lag_s` behind (its queue spans
more than that much stream time) loses the whole queue and then every frame up to the next
keyframe: it is caught up, the others never wait for it. Sequence numbers are the viewer's
own (consecutive across what it is sent), so a decoder sees a clean jump to a keyframe, not
packet loss.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from daemon.streams.rtp import CLOCK_RATE, RtpFrame, renumbered


@dataclass
class ViewerStats:
    sent: int = 0
    dropped: int = 0  # frames dropped for this viewer alone
    throttled: int = 0  # times it fell behind and was caught up


class Viewer:
    def __init__(self, label: str, channel: int, max_lag_s: float) -> None:
        self.label = label  # "user@host:port on /camera", for the logs
        self.channel = channel
        self.first_seq = secrets.randbits(16)
        self.stats = ViewerStats()
        self._next_seq = self.first_seq
        self._max_lag = max(1, int(max_lag_s * CLOCK_RATE))
        self._queue: deque[RtpFrame] = deque()
        self._waiting_for_key = True  # a decoder can only start at a keyframe
        self._started = False
        self._cv = threading.Condition()
        self._unreported = 0  # drops not logged yet
        self.behind_since: float | None = None  # when the current run of drops began

    def offer(self, frame: RtpFrame) -> bool:
        """Queue `frame`; False if it was dropped for this viewer."""
        with self._cv:
            if self._queue and (frame.timestamp - self._queue[0].timestamp) % 2**32 > \
                    self._max_lag:
                # behind by more than the allowed lag: drop what it has not read, restart at
                # the next keyframe (this frame, if it is one)
                self.stats.dropped += len(self._queue)
                self._unreported += len(self._queue)
                self.stats.throttled += 1
                self._queue.clear()
                self._waiting_for_key = True
                if self.behind_since is None:
                    self.behind_since = time.monotonic()
            if self._waiting_for_key and not frame.key:
                if self._started:  # frames before its first keyframe are no loss
                    self.stats.dropped += 1
                    self._unreported += 1
                return False
            self._waiting_for_key = False
            self._started = True
            self._queue.append(frame)
            self._cv.notify()
            return True

    def take(self, timeout: float) -> bytes | None:
        """The next frame as interleaved RTP (`$` framing), or None after `timeout`."""
        with self._cv:
            if not self._queue and not self._cv.wait_for(lambda: bool(self._queue), timeout):
                return None
            frame = self._queue.popleft()
            if not self._queue and not self._waiting_for_key:
                self.behind_since = None  # caught up
            first = self._next_seq
            self._next_seq = (first + len(frame.packets)) & 0xFFFF
            self.stats.sent += 1
        head = bytes((0x24, self.channel))
        return b"".join(head + len(p).to_bytes(2, "big") + p
                        for p in renumbered(frame.packets, first))

    def unreported_drops(self) -> int:
        """Frames dropped since the last call (for the log and the metrics)."""
        with self._cv:
            count, self._unreported = self._unreported, 0
            return count
