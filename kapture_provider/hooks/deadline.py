"""One deadline for a whole answer: status line, headers, interim 1xx answers and body.

A socket timeout bounds each read, so a server that drips a byte at a time, or sends interim answers
without end, could hold a request for ever. One watcher thread per process shuts the reading side of a
socket whose answer is past its deadline; the blocked read then ends and the request fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any


class AnswerDeadlines:
    """Deadlines of the answers being read, one per thread (a thread reads one answer at a time)."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # the watcher thread does not survive a fork

    def _reset(self) -> None:
        self._condition = threading.Condition()
        self._due: dict[int, tuple[float, Any]] = {}  # thread -> (deadline, socket)
        self._expired: set[int] = set()
        self._watcher: threading.Thread | None = None
        self._wakes_at: float | None = None

    def start(self, sock: Any, seconds: float | None) -> None:
        """The answer on ``sock`` must be read in full within ``seconds`` (``None``: no deadline)."""
        if seconds is None:
            return
        deadline = time.monotonic() + seconds
        with self._condition:
            self._due[threading.get_ident()] = (deadline, sock)
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="kapture-answer-deadlines", daemon=True)
                self._watcher.start()
            elif self._wakes_at is None or deadline < self._wakes_at:
                self._condition.notify()

    def finish(self) -> bool:
        """The current thread is done with its answer; ``True`` if its deadline had passed."""
        ident = threading.get_ident()
        with self._condition:
            self._due.pop(ident, None)
            if ident in self._expired:
                self._expired.discard(ident)
                return True
            return False

    def _watch(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                for ident, (deadline, sock) in list(self._due.items()):
                    if deadline <= now:
                        del self._due[ident]
                        self._expired.add(ident)
                        try:
                            sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
                        except OSError:
                            pass  # already closed
                self._wakes_at = min((deadline for deadline, _ in self._due.values()), default=None)
                self._condition.wait(None if self._wakes_at is None else self._wakes_at - now)


#: Shared by every transport of the process.
ANSWER_DEADLINES = AnswerDeadlines()
