"""The faults the emulator can answer an add-update request with, when it injects them, and its rate limit.

A fault comes from the order's own script first, then the shared script, then a seeded random draw, so
that a test can place faults exactly or a benchmark can sprinkle them. Not locked: its caller holds a lock.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable
from enum import StrEnum

from kapture_provider.testing.emulator.answers import HTML, Reply, failed, json_bytes
from kapture_provider.testing.emulator.store import (
    CONTACT_ID_START,
    CUSTOMER_ID_START,
    ENQUIRY_ID_START,
    success_payload,
)


class Fault(StrEnum):
    """A fault the emulator can answer an add-update request with."""

    HTTP_500 = "500"
    HTTP_502 = "502"
    HTTP_503 = "503"
    HTTP_429 = "429"
    HTTP_429_BARE = "429-bare"
    RESET = "reset"
    SLOW = "slow"
    FAILED_BODY = "failed-body"
    NON_JSON = "non-json"
    TRUNCATED = "truncated"
    HTTP_401 = "401"
    HTTP_403 = "403"
    HTTP_404 = "404"


DEFAULT_FAULT_KINDS: tuple[Fault, ...] = (
    Fault.HTTP_500,
    Fault.HTTP_502,
    Fault.HTTP_503,
    Fault.HTTP_429,
    Fault.RESET,
)
"""The faults drawn at random when ``fault_rate`` is set and ``fault_kinds`` is not: the transient ones."""

_SUCCESS_SAMPLE = json_bytes(success_payload(CUSTOMER_ID_START, ENQUIRY_ID_START, CONTACT_ID_START))
_BAD_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_LOGIN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Kapture CRM</title></head>\n"
    b"<body><h1>Kapture CRM</h1><p>Your session has expired. Please log in again.</p></body></html>\n"
)
FAULT_REPLIES: dict[Fault, Reply] = {
    Fault.HTTP_500: failed(500, "Internal Server Error"),
    Fault.HTTP_502: Reply(502, _BAD_GATEWAY_PAGE, HTML),
    Fault.HTTP_503: failed(503, "Service Unavailable"),
    Fault.HTTP_429: failed(429, "Too Many Requests"),
    Fault.HTTP_429_BARE: failed(429, "Too Many Requests"),
    Fault.RESET: Reply(0, reset=True),
    Fault.FAILED_BODY: failed(200, "Order Updation Failed"),
    Fault.NON_JSON: Reply(200, _LOGIN_PAGE, HTML),
    Fault.TRUNCATED: Reply(200, _SUCCESS_SAMPLE[: len(_SUCCESS_SAMPLE) // 2]),
    Fault.HTTP_401: failed(401, "Invalid Auth Key"),
    Fault.HTTP_403: failed(403, "Access Denied"),
    Fault.HTTP_404: failed(404, "Not Found"),
}
"""The canned answers of the faults that do not process the request ("slow" does: it only delays)."""

RETRY_AFTER_FAULTS = frozenset({Fault.HTTP_503, Fault.HTTP_429})
"""The faults whose answer carries ``Retry-After``."""


class FaultPlan:
    """Scripted faults (per order, then shared, in arrival order) and seeded random draws."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._script: deque[Fault] = deque()
        self._order_scripts: dict[str, deque[Fault]] = {}

    def script(self, faults: Iterable[Fault]) -> None:
        self._script.extend(faults)

    def script_for_order(self, order_id: str, faults: Iterable[Fault]) -> None:
        self._order_scripts.setdefault(order_id, deque()).extend(faults)

    def reseed(self, seed: int | None) -> None:
        self._rng.seed(seed)

    def clear(self, seed: int | None) -> None:
        """Forget the scripts and start the random draws again from ``seed``."""
        self._script.clear()
        self._order_scripts.clear()
        self.reseed(seed)

    def next_fault(self, order_id: str | None, fault_rate: float, fault_kinds: tuple[Fault, ...]) -> Fault | None:
        """The fault for this request, or None to answer it normally."""
        queue = self._order_scripts.get(order_id) if order_id is not None else None
        if queue:
            return queue.popleft()
        if self._script:
            return self._script.popleft()
        if fault_rate and self._rng.random() < fault_rate:
            return self._rng.choice(fault_kinds)
        return None


class RateWindow:
    """A sliding one-second window over admitted requests."""

    def __init__(self) -> None:
        self._admitted: deque[float] = deque()

    def clear(self) -> None:
        self._admitted.clear()

    def admit(self, rate_limit: float | None) -> bool:
        """Whether one more request fits under ``rate_limit`` per second (None: no limit)."""
        if rate_limit is None:
            return True
        now = time.monotonic()
        admitted = self._admitted
        while admitted and admitted[0] <= now - 1.0:
            admitted.popleft()
        if len(admitted) >= rate_limit:
            return False
        admitted.append(now)
        return True
