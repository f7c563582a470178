"""Kapture's order API as the emulator answers it: add-update and search, credentials, faults, records.

One lock guards the store, the fault plan, the rate window and the request records, and the settings
are replaced whole on change, so each request sees one consistent state whichever thread serves it.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kapture_provider.testing.emulator.answers import Reply, failed, json_bytes, json_reply
from kapture_provider.testing.emulator.faults import (
    DEFAULT_FAULT_KINDS,
    FAULT_REPLIES,
    RETRY_AFTER_FAULTS,
    Fault,
    FaultPlan,
    RateWindow,
)
from kapture_provider.testing.emulator.store import OrderStore, order_id_of, text

ADD_UPDATE_PATH = "/ms/customer/order/api/v1/add-update"
SEARCH_PATH = "/ms/customer-search/order-search/api/v1/pull-internal"
_NOT_JSON = object()


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One API request the emulator answered (requests to ``/_emulator/`` are not recorded)."""

    seq: int
    received_at: float
    method: str
    path: str
    order_id: str | None
    status: int
    """HTTP status sent; 0 when the connection was reset."""
    fault: str | None
    authorization: str | None
    body: Any
    """Parsed JSON, or the raw text when not JSON; None when ``record_bodies`` is off."""
    stored: bool = False
    """Whether this request changed the order store."""
    authorized: bool = False
    """Whether its Authorization header was accepted."""


@dataclass(frozen=True)
class Config:
    """Run-time settings; replaced as a whole on change, so a request reads one consistent snapshot."""

    username: str = "kapture-user"
    password: str = "kapture-password"
    token: str | None = None
    failure_mode: str = "body"
    latency: float = 0.0
    rate_limit: float | None = None
    retry_after: int = 1
    fault_rate: float = 0.0
    fault_kinds: tuple[Fault, ...] = DEFAULT_FAULT_KINDS
    seed: int | None = None
    slow_seconds: float = 5.0
    record_bodies: bool = True
    auth_tokens: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.failure_mode not in ("body", "http"):
            raise ValueError(f"failure_mode must be 'body' or 'http', not {self.failure_mode!r}")
        if not 0 <= self.fault_rate <= 1:
            raise ValueError(f"fault_rate must be within 0..1, not {self.fault_rate!r}")
        if self.latency < 0 or self.slow_seconds < 0 or self.retry_after < 0:
            raise ValueError("latency, slow_seconds and retry_after must not be negative")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError(f"rate_limit must be positive or None, not {self.rate_limit!r}")
        kinds = tuple(Fault(kind) for kind in self.fault_kinds)
        if self.fault_rate and not kinds:
            raise ValueError("fault_rate needs at least one fault kind")
        object.__setattr__(self, "fault_kinds", kinds)
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        object.__setattr__(self, "auth_tokens", frozenset(token for token in (basic, self.token) if token))

    def rejection(self, status: int, message: str) -> Reply:
        """A failed answer to a request Kapture refuses (bad auth or body), as per ``failure_mode``."""
        return failed(status if self.failure_mode == "http" else 200, message)

    def authorized(self, header: str | None) -> bool:
        scheme, _, credentials = (header or "").partition(" ")
        return scheme.lower() == "basic" and credentials.strip() in self.auth_tokens

    def as_dict(self) -> dict[str, Any]:
        settings = asdict(self)
        del settings["auth_tokens"]
        settings["fault_kinds"] = [str(kind) for kind in self.fault_kinds]
        return settings


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON


def _recorded_body(raw: bytes) -> Any:
    """The body as recorded: parsed afresh (so it shares nothing with the store), else its text."""
    body = _loads(raw)
    return raw.decode("utf-8", "replace") if body is _NOT_JSON else body


def _add_update_error(document: Any, order_id: str | None) -> str | None:
    if not isinstance(document, dict):
        return "Invalid request body"
    if order_id is None:
        return "order_info.order_id is mandatory"
    customer = document.get("customer_info")
    if not isinstance(customer, dict) or not text(customer.get("customer_name")):
        return "customer_info.customer_name is mandatory"
    return None


def _search_order_ids(document: dict[str, Any]) -> list[str] | None:
    """The ``orderIds`` filter (a list or a comma-separated string); None when absent."""
    value = document.get("orderIds")
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError("orderIds must be a list or a comma-separated string")
    return list(dict.fromkeys(key for key in (str(item).strip() for item in items) if key))


class KaptureApi:
    """An in-memory Kapture order API with fault injection, latency and a rate limit; thread-safe."""

    DEFAULT_FAULT_KINDS = DEFAULT_FAULT_KINDS

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._faults = FaultPlan(config.seed)
        self._window = RateWindow()
        self._store = OrderStore()
        self._records: list[RecordedRequest] = []

    # -- configuration ---------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change settings (the constructor's keywords except host, port and TLS) while running."""
        with self._lock:
            self._config = replace(self._config, **changes)
            if "seed" in changes:
                self._faults.reseed(self._config.seed)

    @property
    def config(self) -> dict[str, Any]:
        """The current settings."""
        return self._config.as_dict()

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries Kapture's credentials as now configured."""
        return self._config.authorized(header)

    def script(self, *faults: Fault | str) -> None:
        """Answer the next add-update requests, in arrival order, with these faults."""
        queued = [Fault(fault) for fault in faults]
        with self._lock:
            self._faults.script(queued)

    def script_for_order(self, order_id: str | int, *faults: Fault | str) -> None:
        """Answer the next add-update requests for ``order_id`` with these faults (before :meth:`script`)."""
        queued = [Fault(fault) for fault in faults]
        with self._lock:
            self._faults.script_for_order(str(order_id).strip(), queued)

    def reset(self) -> None:
        """Forget orders, ids, recorded requests, scripted faults and the rate window; re-seed faults."""
        with self._lock:
            self._store = OrderStore()
            self._records = []
            self._window.clear()
            self._faults.clear(self._config.seed)

    # -- inspection --------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every API request answered so far, oldest first."""
        with self._lock:
            return list(self._records)

    def requests_since(self, seq: int) -> list[RecordedRequest]:
        """The API requests answered after the one numbered ``seq``, oldest first."""
        with self._lock:
            start = bisect.bisect_right(self._records, seq, key=lambda record: record.seq)
            return self._records[start:]

    @property
    def orders(self) -> dict[str, Any]:
        """Order id → the latest body stored for it (a copy)."""
        with self._lock:
            return self._store.copies()

    @property
    def update_counts(self) -> dict[str, int]:
        """Order id → how many successful add-update requests it received."""
        with self._lock:
            return self._store.update_counts()

    def stored_order(self, order_id: str | int) -> dict[str, Any] | None:
        """The stored record of one order (body, update count, ids), or None when unknown."""
        with self._lock:
            return self._store.record(str(order_id).strip())

    def stats(self) -> dict[str, Any]:
        """Counts of requests, stored updates, distinct orders, answers by status and by fault, 429s."""
        with self._lock:
            records = list(self._records)
            orders = len(self._store)
        return {
            "requests": len(records),
            "stored": sum(record.stored for record in records),
            "orders": orders,
            # The rate limiter's 429s are the only ones that are not an injected fault.
            "rate_limited": sum(record.status == 429 and record.fault is None for record in records),
            "by_status": dict(Counter(str(record.status) for record in records)),
            "by_fault": dict(Counter(record.fault for record in records if record.fault)),
        }

    # -- answering (called from server threads) ------------------------------------------------------

    def answer(self, method: str, target: str, authorization: str | None, raw: bytes) -> Reply:
        """Kapture's answer to an API request (``target``: path and query), recorded before it is sent."""
        received_at = time.time()
        config = self._config
        authorized = config.authorized(authorization)
        path = target.partition("?")[0]
        if path == ADD_UPDATE_PATH and method == "POST":
            return self._add_update(config, received_at, target, authorization, authorized, raw)
        if path == SEARCH_PATH and method == "POST":
            reply = self._search(config, authorized, _loads(raw))
        elif path in (ADD_UPDATE_PATH, SEARCH_PATH):
            reply = failed(405, "Method Not Allowed", (("Allow", "POST"),))
        else:
            reply = failed(404, "Not Found")
        body = _recorded_body(raw) if config.record_bodies else None
        with self._lock:
            self._record(received_at, method, target, None, reply.status, None, authorization, body, authorized)
        return reply

    def _add_update(
        self,
        config: Config,
        received_at: float,
        target: str,
        authorization: str | None,
        authorized: bool,
        raw: bytes,
    ) -> Reply:
        document = _loads(raw)
        order_id = order_id_of(document)
        error = _add_update_error(document, order_id)
        rejection: Reply | None = None
        if not authorized:
            rejection = config.rejection(401, "Invalid Auth Key")
        elif error is not None:
            rejection = config.rejection(400, error)
        body = _recorded_body(raw) if config.record_bodies else None
        retry_after = (("Retry-After", str(config.retry_after)),)
        fault: Fault | None = None
        stored = False
        with self._lock:
            if not self._window.admit(config.rate_limit):
                reply = failed(429, "Rate limit exceeded", retry_after)
            else:
                fault = self._faults.next_fault(order_id, config.fault_rate, config.fault_kinds)
                if fault is not None and fault is not Fault.SLOW:
                    reply = FAULT_REPLIES[fault]
                    if fault in RETRY_AFTER_FAULTS:
                        reply = replace(reply, headers=retry_after)
                elif rejection is not None:
                    reply = rejection
                else:
                    assert order_id is not None  # validated above
                    reply = json_reply(self._store.upsert(order_id, document))
                    stored = True
            self._record(
                received_at, "POST", target, order_id, reply.status, fault, authorization, body, authorized, stored
            )
        delay = config.latency + (config.slow_seconds if fault is Fault.SLOW else 0.0)
        return replace(reply, delay=delay) if delay else reply

    def _search(self, config: Config, authorized: bool, document: Any) -> Reply:
        if not authorized:
            return config.rejection(401, "Invalid Auth Key")
        if not isinstance(document, dict):
            return config.rejection(400, "Invalid request body")
        cm_id = document.get("cmId")
        if not isinstance(cm_id, int) or isinstance(cm_id, bool) or cm_id <= 0:
            return config.rejection(400, "cmId is required")
        try:
            wanted = _search_order_ids(document)
        except ValueError as exc:
            return config.rejection(400, str(exc))
        with self._lock:
            payload = {
                "status": "success",
                "message": "Orders fetched successfully",
                "orders": self._store.bodies(wanted),
            }
            return Reply(200, json_bytes(payload))

    def _record(
        self,
        received_at: float,
        method: str,
        path: str,
        order_id: str | None,
        status: int,
        fault: Fault | None,
        authorization: str | None,
        body: Any,
        authorized: bool,
        stored: bool = False,
    ) -> None:
        """Append a request record with the next sequence number (lock held)."""
        self._records.append(
            RecordedRequest(
                next(self._seq),
                received_at,
                method,
                path,
                order_id,
                status,
                None if fault is None else str(fault),
                authorization,
                body,
                stored,
                authorized,
            )
        )
