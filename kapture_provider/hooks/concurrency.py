"""How many requests one hook keeps in flight: a latency-gradient limiter, and the gate that applies it.

:class:`ConcurrencyLimit` is pure logic fed with answers and the time (unit-testable). It follows TCP
Vegas and Netflix's concurrency-limits (gradient limiter): answers are taken in short windows; while
the window's median round trip stays within ``TOLERANCE`` × the floor (the fastest window seen), more
requests in flight bring more throughput and the limit grows — doubling per window at first (slow
start), then by √limit; when the round trip rises above that (Kapture is queueing), the limit shrinks
by the gradient floor / now. A throttle answer (429, 503) cuts it too. When ``RELIEF_WINDOWS`` cuts in
a row did not make the answers faster, the queue is not ours: Kapture became slower, and the round
trip of now is its new floor.

:class:`ConcurrencyGate` admits at most the current limit of requests at once, for every thread of a
hook, and logs the limit's changes (one line every ``LOG_EVERY`` seconds at most).
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time

from kapture_provider.hooks.throttle import THROTTLE_STATUSES

log = logging.getLogger(__name__)

DEFAULT_CEILING = 64
#: Where an adaptive limit starts; a ceiling up to ``SMALL_CEILING`` is a number chosen for this Kapture,
#: and the limit starts there (it only shrinks when the answers say so).
INITIAL = 8
SMALL_CEILING = 16
#: A window closes once it is this old (since its first request left) and holds this many answers; in
#: slow start, a whole limit's worth (one round), so that no doubling is decided on part of a round.
WINDOW_SECONDS = 0.4
WINDOW_ANSWERS = 8
#: After this many windows of cuts without faster answers, the round trip of now becomes the floor.
RELIEF_WINDOWS = 3
#: Round trips up to this multiple of the floor count as "not queueing".
TOLERANCE = 1.5
#: The most one window can cut: limit × (1 - MAX_CUT).
MAX_CUT = 0.25
#: A throttle answer multiplies the limit by this, at most once per window.
THROTTLED_CUT = 0.9
LOG_EVERY = 5.0


class ConcurrencyLimit:
    """The number of requests to keep in flight, from the answers' round trips and throttle answers.

    :param ceiling: the limit never exceeds this.
    :param fixed: keep the limit at ``ceiling`` whatever the answers say.
    :param initial: where an adaptive limit starts (default: ``INITIAL``, or a ceiling up to ``SMALL_CEILING``).
    """

    def __init__(self, ceiling: int = DEFAULT_CEILING, *, fixed: bool = False, initial: int | None = None):
        if ceiling < 1:
            raise ValueError("the concurrency ceiling must be at least 1")
        self.ceiling = ceiling
        self.fixed = fixed
        if initial is None:
            initial = ceiling if fixed or ceiling <= SMALL_CEILING else INITIAL
        self._limit = float(min(initial, ceiling))
        self._slow_start = True
        self._window_start: float | None = None  # when the window's first request left
        self._first_answer = 0.0  # when its answer came
        self._window: list[float] = []  # round trips of the accepted answers in this window
        self._throttled = False  # a throttle answer cut the limit in this window
        self._floor: float | None = None
        self._latest: float | None = None
        self._cut_from: float | None = None  # the median round trip when this series of cuts began
        self._cut = 1.0  # the product of the cuts since
        self._cut_windows = 0
        #: (time, limit) each time the limit changed: for logs, plots and the run summary.
        self.history: list[tuple[float, int]] = []

    @property
    def current(self) -> int:
        """Requests that may be in flight now."""
        return max(1, int(self._limit))

    @property
    def floor(self) -> float | None:
        """The round trip (s) Kapture answers in when nothing queues: the fastest window's median."""
        return self._floor

    @property
    def latest(self) -> float | None:
        """The last window's median round trip (s)."""
        return self._latest

    def on_answer(self, status: int | None, round_trip: float, now: float) -> None:
        """Feed one answer (``status`` None: no answer, a network failure) that came ``round_trip`` seconds
        after its request left."""
        if self.fixed:
            return
        if status in THROTTLE_STATUSES:
            if not self._throttled:
                self._throttled = True
                self._slow_start = False
                self._set(self._limit * THROTTLED_CUT, now)
            return
        if status is None or status >= 500:
            return  # says nothing about queueing
        if self._window_start is None:
            self._window_start, self._first_answer = now - round_trip, now
        self._window.append(round_trip)
        answers = max(self.current, WINDOW_ANSWERS) if self._slow_start else WINDOW_ANSWERS
        if now - self._window_start >= WINDOW_SECONDS and len(self._window) >= answers:
            self._close_window(now)

    def _close_window(self, now: float) -> None:
        median = statistics.median(self._window)
        answers_per_second = len(self._window) / max(now - self._first_answer, 1e-3)
        in_use = answers_per_second * median  # requests in flight on average (Little's law)
        busy = in_use >= self.current / 2  # fewer: the limit did not hold anything back, nothing to learn
        self._window, self._window_start = [], None
        throttled, self._throttled = self._throttled, False
        self._latest = median
        self._floor = median if self._floor is None else min(self._floor, median)
        gradient = min(1.0, TOLERANCE * self._floor / median)
        if gradient < 1.0:
            self._slow_start = False
            self._cut_limit(median, max(1.0 - MAX_CUT, gradient), now)
            return
        self._cut_from = None
        if busy and not throttled:
            grown = self._limit * 2 if self._slow_start else self._limit + math.sqrt(self._limit)
            self._set(grown, now)

    def _cut_limit(self, median: float, factor: float, now: float) -> None:
        """Cut the limit by ``factor``, unless the cuts so far did not bring faster answers."""
        if self._cut_from is None or median <= self._cut_from * (1 + self._cut) / 2:
            self._cut_from, self._cut, self._cut_windows = median, 1.0, 0  # faster: the queue was ours
        self._cut_windows += 1
        if self._cut_windows > RELIEF_WINDOWS:  # fewer in flight, answers as slow: Kapture is slower
            self._floor, self._cut_from = median, None
            return
        self._cut *= factor
        self._set(self._limit * factor, now)

    def _set(self, limit: float, now: float) -> None:
        before = self.current
        self._limit = min(float(self.ceiling), max(1.0, limit))
        if self.current != before:
            self.history.append((now, self.current))


class ConcurrencyGate:
    """Admits at most ``limit.current`` requests at once across threads; feeds it their answers."""

    def __init__(self, limit: ConcurrencyLimit):
        self.limit = limit
        self.in_flight = 0
        self._changed = threading.Condition()
        self._logged_at = -math.inf
        self._logged_limit = limit.current

    def acquire(self) -> None:
        """Wait until one more request may be in flight, and count it."""
        with self._changed:
            while self.in_flight >= self.limit.current:
                self._changed.wait()
            self.in_flight += 1

    def release(self, status: int | None, round_trip: float) -> None:
        """Count a request as answered (``status`` None: it failed without an answer)."""
        now = time.monotonic()
        with self._changed:
            self.limit.on_answer(status, round_trip, now)
            self.in_flight -= 1
            current = self.limit.current
            if current > self.in_flight:
                self._changed.notify(current - self.in_flight)
            if current != self._logged_limit and now - self._logged_at >= LOG_EVERY:
                self._logged_at, self._logged_limit = now, current
                latest, floor = self.limit.latest, self.limit.floor
                log.info(
                    "Kapture concurrency: %d requests in flight at most (round trip %s, fastest %s)",
                    current, _ms(latest), _ms(floor),
                )  # fmt: skip


def _ms(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{1000 * seconds:.0f} ms"
