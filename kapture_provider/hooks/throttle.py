"""Request pacing shared by every thread that uses one hook.

* ``max_requests_per_second``: requests are spaced evenly (no bursts), across all threads.
* ``pause(seconds)``: a ``Retry-After`` answer stops *every* thread until it has passed, instead of
  each worker discovering the limit on its own and hammering the server in turn.
"""

from __future__ import annotations

import threading
import time


class RequestThrottle:
    """Thread-safe pacing gate: call :meth:`wait` before each request."""

    def __init__(self, max_requests_per_second: float | None = None):
        self._lock = threading.Lock()
        self._interval = 1.0 / max_requests_per_second if max_requests_per_second else 0.0
        self._next_slot = 0.0
        self._paused_until = 0.0

    @property
    def max_requests_per_second(self) -> float | None:
        return 1.0 / self._interval if self._interval else None

    @max_requests_per_second.setter
    def max_requests_per_second(self, value: float | None) -> None:
        with self._lock:
            self._interval = 1.0 / value if value else 0.0

    def pause(self, seconds: float) -> None:
        """Hold every request back for ``seconds`` from now (longest pause wins)."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def wait(self) -> None:
        """Block until this thread may send its next request."""
        while True:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._paused_until, self._next_slot)
                if start <= now:
                    self._next_slot = now + self._interval if self._interval else 0.0
                    return
                if self._interval and self._paused_until <= now:
                    # reserve the slot so concurrent waiters line up behind it
                    self._next_slot = start + self._interval
                    delay, reserved = start - now, True
                else:
                    delay, reserved = start - now, False
            time.sleep(delay)
            if reserved:
                return
