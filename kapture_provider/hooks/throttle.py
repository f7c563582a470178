"""Request pacing shared by every thread that uses one hook.

Two modes:

* **fixed** (``max_requests_per_second`` given): requests are spaced evenly across all threads, and
  never more than that many go out within any ``WINDOW`` (just over a second).
* **adaptive** (the default): send freely until Kapture pushes back, then discover its limit with an
  additive-increase / multiplicative-decrease controller over the request *rate*:

  - a throttle answer (429, or 503) marks the current rate as a ``ceiling`` (never above the one
    learned before) and cuts the rate to ``DECREASE`` × ceiling — at most once per second, so one
    burst of 429s counts once. The first one, while still unpaced, takes the ceiling from the
    requests Kapture *accepted* in the last second;
  - every clean second the rate grows by ``INCREASE`` (at least one request/s) up to ``HEADROOM`` ×
    ceiling, where it stays: a learned limit is held just under. After ``PROBE_AFTER`` clean seconds
    there the ceiling is raised by ``PROBE_STEP`` to find out whether the limit went up; each probe
    that ends in a 429 doubles that wait (up to ``MAX_PROBE_AFTER``);
  - while answers are slowing down (latency above ``SLOW_FACTOR`` × the fastest seen, smoothed),
    the rate is held instead of raised.

A ``Retry-After`` (:meth:`RequestThrottle.pause`) stops *every* thread while the limit is unknown and
in the second it was discovered in (the unpaced burst filled Kapture's window), instead of each one
hitting the server in turn; later, it holds back only the thread that was told, the cut rate sparing
the others.
"""

from __future__ import annotations

import threading
import time
from collections import deque

DECREASE = 0.9
INCREASE = 0.05
HEADROOM = 0.97
PROBE_AFTER = 30.0
MAX_PROBE_AFTER = 600.0
PROBE_STEP = 1.05
SLOW_FACTOR = 3.0
MIN_RATE = 1.0
#: An unpaced sender starts pacing only when Kapture accepted at least this many requests in the
#: second before a 429: fewer says nothing about its limit, and the 429 just pauses (Retry-After).
MIN_EVIDENCE = 5
#: A rate of R means at most R sends in any window this long: a little over a second, so that
#: delivery jitter cannot squeeze R + 1 requests into one second at the server.
WINDOW = 1.02
THROTTLE_STATUSES = frozenset({429, 503})


class RequestThrottle:
    """Thread-safe pacing gate: call :meth:`wait` before each request and :meth:`observe` after it."""

    def __init__(self, max_requests_per_second: float | None = None, *, adaptive: bool = True):
        self._lock = threading.Lock()
        self.adaptive = adaptive and not max_requests_per_second
        self.rate: float | None = max_requests_per_second or None  # None: unpaced
        self.ceiling: float | None = None
        self._next_slot = 0.0
        self._sent: deque[float] = deque()  # send times, at most `rate` of them
        self._paused_until = 0.0
        self._accepted: deque[float] = deque()  # accepted answers in the last second
        self._last_decrease = -1e9
        self._discovered_at = -1e9  # when the first throttle answer ended the unpaced start
        self._last_tick = time.monotonic()
        self._at_ceiling_since: float | None = None
        self._probe_after = PROBE_AFTER
        self._probing = False  # the ceiling was raised by a probe and no 429 came since
        self._fastest = float("inf")
        self._latency: float | None = None
        #: (time, rate) each time the rate changed: for plots and logs.
        self.history: list[tuple[float, float | None]] = []

    def pause(self, seconds: float) -> None:
        """Honour a ``Retry-After`` of ``seconds``: every thread waits while no rate is learned or it was just
        learned (longest pause wins), only the calling one once the adaptive rate paces them."""
        with self._lock:
            now = time.monotonic()
            shared = not self.adaptive or self.rate is None or now - self._discovered_at < 1.0
            if shared:
                self._paused_until = max(self._paused_until, now + seconds)
        if not shared:
            time.sleep(seconds)

    def wait(self) -> None:
        """Block until this thread may send its next request."""
        while True:
            with self._lock:
                now = time.monotonic()
                if self._paused_until > now:
                    delay = self._paused_until - now
                elif self.rate is None:
                    return
                else:
                    start = self._next_slot
                    cap = max(1, int(self.rate))
                    while len(self._sent) > cap:
                        self._sent.popleft()
                    if len(self._sent) == cap:  # never more than `rate` sends in any WINDOW
                        start = max(start, self._sent[0] + WINDOW)
                    if start <= now:
                        self._sent.append(now)
                        self._next_slot = now + 1.0 / self.rate
                        return
                    delay = start - now
            time.sleep(delay)

    def observe(self, status: int | None, latency: float) -> None:
        """Feed one answer (``None`` for a network failure) into the adaptive controller."""
        if not self.adaptive:
            return
        with self._lock:
            now = time.monotonic()
            if status in THROTTLE_STATUSES:
                self._decrease(now)
                return
            if status is None or status >= 500:
                return
            self._accepted.append(now)
            while self._accepted and self._accepted[0] < now - 1.0:
                self._accepted.popleft()
            self._fastest = min(self._fastest, latency)
            self._latency = latency if self._latency is None else 0.8 * self._latency + 0.2 * latency
            if now - self._last_tick >= 1.0:
                self._last_tick = now
                self._increase(now)

    def _decrease(self, now: float) -> None:
        if now - self._last_decrease < 1.0:
            return
        while self._accepted and self._accepted[0] < now - 1.0:
            self._accepted.popleft()
        if self.rate is None and len(self._accepted) < MIN_EVIDENCE:
            return
        self._last_decrease = self._last_tick = now
        self._at_ceiling_since = None
        if self.rate is None:
            self._discovered_at = now
        current = self.rate if self.rate is not None else float(len(self._accepted))
        ceiling = current
        if self._probing and self.ceiling is not None:  # the probe was too high: back, and probe later
            ceiling = min(current, self.ceiling / PROBE_STEP)
            self._probe_after = min(MAX_PROBE_AFTER, 2 * self._probe_after)
        self._probing = False
        self.ceiling = ceiling
        self._set_rate(max(MIN_RATE, current * DECREASE), now)

    def _increase(self, now: float) -> None:
        if self.rate is None or self.ceiling is None:
            return
        if self._latency is not None and self._latency > SLOW_FACTOR * self._fastest:
            return  # Kapture is slowing down: hold
        target = HEADROOM * self.ceiling
        if self.rate < target:
            self._set_rate(min(target, self.rate + max(1.0, INCREASE * self.rate)), now)
            self._at_ceiling_since = None
        elif self._at_ceiling_since is None:
            self._at_ceiling_since = now
        elif now - self._at_ceiling_since >= self._probe_after:
            self.ceiling *= PROBE_STEP
            self._probing = True
            self._at_ceiling_since = None

    def _set_rate(self, rate: float, now: float) -> None:
        self.rate = rate
        self.history.append((now, rate))
