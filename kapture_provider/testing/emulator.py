"""Kapture CRM API emulator: a threaded HTTP/1.1 server on loopback with fault injection.

It implements ``POST /ms/customer/order/api/v1/add-update`` (an upsert keyed by
``order_info.order_id``) and the read-only ``POST /ms/customer-search/order-search/api/v1/pull-internal``
as documented by Kapture, keeps orders in memory, records every API request, and can answer with
injected faults (scripted or random), fixed latency and a rate limit. Everything can be inspected and
changed from Python or over HTTP under ``/_emulator/``. Given a certificate it serves HTTPS (and, given
a client CA, requires a client certificate it issued: mutual TLS).
"""

from __future__ import annotations

import base64
import bisect
import copy
import itertools
import json
import os
import random
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote

__all__ = ["ADD_UPDATE_PATH", "SEARCH_PATH", "Fault", "KaptureEmulator", "RecordedRequest"]

ADD_UPDATE_PATH = "/ms/customer/order/api/v1/add-update"
SEARCH_PATH = "/ms/customer-search/order-search/api/v1/pull-internal"
_CONTROL_PREFIX = "/_emulator/"
_JSON = "application/json"
_HTML = "text/html"


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


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    reset: bool = False


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _failed(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, _json_bytes({"message": message, "status": "failed"}), headers=headers)


def _success_payload(customer_id: int, enquiry_id: int, contact_id: int) -> dict[str, Any]:
    return {
        "status": "success",
        "message": "Order Updated successfully !",
        "Order": {
            "result": True,
            "customer_id": customer_id,
            "enquiry_id": enquiry_id,
            "action": "ORDER",
            "action_event": "ORDER_FIELD_UPDATION",
            "contact_id": contact_id,
        },
    }


_CUSTOMER_ID_START, _ENQUIRY_ID_START, _CONTACT_ID_START = 191696570, 24284719, 210006001
_SUCCESS_SAMPLE = _json_bytes(_success_payload(_CUSTOMER_ID_START, _ENQUIRY_ID_START, _CONTACT_ID_START))
_BAD_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_LOGIN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Kapture CRM</title></head>\n"
    b"<body><h1>Kapture CRM</h1><p>Your session has expired. Please log in again.</p></body></html>\n"
)
# Canned answers of the faults that do not process the request ("slow" does, "reset" has no answer).
_FAULT_REPLIES: dict[Fault, _Reply] = {
    Fault.HTTP_500: _failed(500, "Internal Server Error"),
    Fault.HTTP_502: _Reply(502, _BAD_GATEWAY_PAGE, _HTML),
    Fault.HTTP_503: _failed(503, "Service Unavailable"),
    Fault.HTTP_429: _failed(429, "Too Many Requests"),
    Fault.HTTP_429_BARE: _failed(429, "Too Many Requests"),
    Fault.RESET: _Reply(0, reset=True),
    Fault.FAILED_BODY: _failed(200, "Order Updation Failed"),
    Fault.NON_JSON: _Reply(200, _LOGIN_PAGE, _HTML),
    Fault.TRUNCATED: _Reply(200, _SUCCESS_SAMPLE[: len(_SUCCESS_SAMPLE) // 2]),
    Fault.HTTP_401: _failed(401, "Invalid Auth Key"),
    Fault.HTTP_403: _failed(403, "Access Denied"),
    Fault.HTTP_404: _failed(404, "Not Found"),
}
_RETRY_AFTER_FAULTS = frozenset({Fault.HTTP_503, Fault.HTTP_429})
_NOT_JSON = object()


@dataclass(frozen=True)
class _Config:
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

    def rejection(self, status: int, message: str) -> _Reply:
        """A failed answer to a request Kapture refuses (bad auth or body), as per ``failure_mode``."""
        return _failed(status if self.failure_mode == "http" else 200, message)

    def authorized(self, header: str | None) -> bool:
        scheme, _, credentials = (header or "").partition(" ")
        return scheme.lower() == "basic" and credentials.strip() in self.auth_tokens

    def as_dict(self) -> dict[str, Any]:
        settings = asdict(self)
        del settings["auth_tokens"]
        settings["fault_kinds"] = [str(kind) for kind in self.fault_kinds]
        return settings


@dataclass(frozen=True, slots=True)
class _StoredOrder:
    body: Any
    customer_id: int
    enquiry_id: int
    contact_id: int
    updates: int


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON


def _recorded_body(raw: bytes) -> Any:
    """The body as recorded: parsed afresh (so it shares nothing with the store), else its text."""
    body = _loads(raw)
    return raw.decode("utf-8", "replace") if body is _NOT_JSON else body


def _merge_sections(stored: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """An update changes the fields it carries; fields it leaves out keep their stored values.

    Object sections (``customer_info``, ``order_info``…) merge field by field; ``contact_info``
    (a list) and any other value is replaced whole.
    """
    merged = dict(stored)
    for section, value in update.items():
        old = merged.get(section)
        merged[section] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _order_id_of(document: Any) -> str | None:
    """``order_info.order_id`` as the store key, or None when absent, empty or not a string or number."""
    info = document.get("order_info") if isinstance(document, dict) else None
    value = info.get("order_id") if isinstance(info, dict) else None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _add_update_error(document: Any, order_id: str | None) -> str | None:
    if not isinstance(document, dict):
        return "Invalid request body"
    if order_id is None:
        return "order_info.order_id is mandatory"
    customer = document.get("customer_info")
    if not isinstance(customer, dict) or not _text(customer.get("customer_name")):
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


class KaptureEmulator:
    """An in-memory Kapture CRM API served over HTTP/1.1 on loopback, with fault injection.

    All settings are keyword arguments here and can be changed while running with :meth:`configure`
    (or ``POST /_emulator/config``). Use as a context manager, or call :meth:`start` / :meth:`stop`.

    ``tls_cert`` (a PEM certificate chain, its key in it or in ``tls_key``) makes it serve HTTPS;
    ``client_ca`` then requires every client to present a certificate issued by that CA.
    """

    DEFAULT_FAULT_KINDS = DEFAULT_FAULT_KINDS

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "kapture-user",
        password: str = "kapture-password",
        token: str | None = None,
        failure_mode: str = "body",
        latency: float = 0.0,
        rate_limit: float | None = None,
        retry_after: int = 1,
        fault_rate: float = 0.0,
        fault_kinds: Iterable[Fault | str] = DEFAULT_FAULT_KINDS,
        seed: int | None = None,
        slow_seconds: float = 5.0,
        record_bodies: bool = True,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        client_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self._tls = _server_tls(tls_cert, tls_key, client_ca)
        self._config = _Config(
            username=username,
            password=password,
            token=token,
            failure_mode=failure_mode,
            latency=latency,
            rate_limit=rate_limit,
            retry_after=retry_after,
            fault_rate=fault_rate,
            fault_kinds=tuple(Fault(kind) for kind in fault_kinds),
            seed=seed,
            slow_seconds=slow_seconds,
            record_bodies=record_bodies,
        )
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._rng = random.Random(seed)
        self._clear()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> KaptureEmulator:
        """Bind the port and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping.clear()
        server = _Server((self._host, self._port), self, self._tls)
        self._port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"kapture-emulator-{self._port}",
            daemon=True,
        )
        self._server = server
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open (keep-alive) connections and wake sleeping handlers."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> KaptureEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port the emulator listens on (known once started)."""
        if not self._port:
            raise RuntimeError("the emulator has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765`` (``https://`` when serving TLS)."""
        return f"{'https' if self._tls else 'http'}://{self._host}:{self.port}"

    # -- configuration -----------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change settings (the constructor's keywords except host and port) while running."""
        with self._lock:
            self._config = replace(self._config, **changes)
            if "seed" in changes:
                self._rng.seed(self._config.seed)

    @property
    def config(self) -> dict[str, Any]:
        """The current settings."""
        return self._config.as_dict()

    def script(self, *faults: Fault | str) -> None:
        """Answer the next add-update requests, in arrival order, with these faults."""
        queued = [Fault(fault) for fault in faults]
        with self._lock:
            self._script.extend(queued)

    def script_for_order(self, order_id: str | int, *faults: Fault | str) -> None:
        """Answer the next add-update requests for ``order_id`` with these faults (before :meth:`script`)."""
        queued = [Fault(fault) for fault in faults]
        with self._lock:
            self._order_scripts.setdefault(str(order_id).strip(), deque()).extend(queued)

    def reset(self) -> None:
        """Forget orders, ids, recorded requests, scripted faults and the rate window; re-seed faults."""
        with self._lock:
            self._clear()
            self._rng.seed(self._config.seed)

    def _clear(self) -> None:
        self._orders: dict[str, _StoredOrder] = {}
        self._records: list[RecordedRequest] = []
        self._script: deque[Fault] = deque()
        self._order_scripts: dict[str, deque[Fault]] = {}
        self._window: deque[float] = deque()
        self._customer_ids: dict[tuple[str, str, str], int] = {}
        self._enquiry_ids: dict[str, int] = {}
        self._contact_ids: dict[tuple[int, str], int] = {}
        self._next_customer_id = itertools.count(_CUSTOMER_ID_START)
        self._next_enquiry_id = itertools.count(_ENQUIRY_ID_START)
        self._next_contact_id = itertools.count(_CONTACT_ID_START)

    # -- inspection --------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every API request answered so far, oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def orders(self) -> dict[str, Any]:
        """Order id → the latest body stored for it (a copy)."""
        with self._lock:
            return {key: copy.deepcopy(order.body) for key, order in self._orders.items()}

    @property
    def update_counts(self) -> dict[str, int]:
        """Order id → how many successful add-update requests it received."""
        with self._lock:
            return {key: order.updates for key, order in self._orders.items()}

    def stored_order(self, order_id: str | int) -> dict[str, Any] | None:
        """The stored record of one order (body, update count, ids), or None when unknown."""
        with self._lock:
            order = self._orders.get(str(order_id).strip())
            return None if order is None else {"order_id": str(order_id).strip(), **asdict(order)}

    def stats(self) -> dict[str, Any]:
        """Counts of requests, stored updates, distinct orders, answers by status and by fault, 429s."""
        with self._lock:
            records = list(self._records)
            orders = len(self._orders)
        return {
            "requests": len(records),
            "stored": sum(record.stored for record in records),
            "orders": orders,
            # The rate limiter's 429s are the only ones that are not an injected fault.
            "rate_limited": sum(record.status == 429 and record.fault is None for record in records),
            "by_status": dict(Counter(str(record.status) for record in records)),
            "by_fault": dict(Counter(record.fault for record in records if record.fault)),
        }

    def connection_json(self, **extra: Any) -> str:
        """A JSON value for ``AIRFLOW_CONN_<ID>`` pointing at this emulator."""
        config = self._config
        return json.dumps(
            {
                "conn_type": "kapture",
                "host": self.url,
                "login": config.username,
                "password": config.password,
                "extra": extra,
            }
        )

    def connection_uri(self, **extra: Any) -> str:
        """The same connection in Airflow's URI form (``host`` parses back to :attr:`url`)."""
        config = self._config
        scheme, _, address = self.url.partition("://")
        uri = (
            f"kapture://{scheme}://{quote(config.username, safe='')}:{quote(config.password, safe='')}"
            f"@{quote(address, safe='')}"
        )
        return f"{uri}?__extra__={quote(json.dumps(extra), safe='')}" if extra else uri

    # -- request handling (called from server threads) ---------------------------------------------

    def _answer(self, method: str, target: str, authorization: str | None, raw: bytes) -> _Reply:
        path, _, query = target.partition("?")
        if path.startswith(_CONTROL_PREFIX):
            return self._control(method, path.removeprefix(_CONTROL_PREFIX), query, raw)
        received_at = time.time()
        config = self._config
        if path == ADD_UPDATE_PATH and method == "POST":
            return self._add_update(config, received_at, target, authorization, raw)
        if path == SEARCH_PATH and method == "POST":
            reply = self._search(config, authorization, _loads(raw))
        elif path in (ADD_UPDATE_PATH, SEARCH_PATH):
            reply = _failed(405, "Method Not Allowed", (("Allow", "POST"),))
        else:
            reply = _failed(404, "Not Found")
        body = _recorded_body(raw) if config.record_bodies else None
        with self._lock:
            self._record(received_at, method, target, None, reply.status, None, authorization, body)
        return reply

    def _add_update(
        self,
        config: _Config,
        received_at: float,
        target: str,
        authorization: str | None,
        raw: bytes,
    ) -> _Reply:
        document = _loads(raw)
        order_id = _order_id_of(document)
        error = _add_update_error(document, order_id)
        rejection: _Reply | None = None
        if not config.authorized(authorization):
            rejection = config.rejection(401, "Invalid Auth Key")
        elif error is not None:
            rejection = config.rejection(400, error)
        body = _recorded_body(raw) if config.record_bodies else None
        retry_after = (("Retry-After", str(config.retry_after)),)
        fault: Fault | None = None
        stored = False
        with self._lock:
            if not self._admit(config):
                reply = _failed(429, "Rate limit exceeded", retry_after)
            else:
                fault = self._next_fault(config, order_id)
                if fault is not None and fault is not Fault.SLOW:
                    reply = _FAULT_REPLIES[fault]
                    if fault in _RETRY_AFTER_FAULTS:
                        reply = replace(reply, headers=retry_after)
                elif rejection is not None:
                    reply = rejection
                else:
                    assert order_id is not None  # validated above
                    reply = _Reply(200, _json_bytes(self._store(order_id, document)))
                    stored = True
            self._record(received_at, "POST", target, order_id, reply.status, fault, authorization, body, stored)
        delay = config.latency + (config.slow_seconds if fault is Fault.SLOW else 0.0)
        return replace(reply, delay=delay) if delay else reply

    def _admit(self, config: _Config) -> bool:
        """Sliding one-second window over admitted add-update requests (lock held)."""
        if config.rate_limit is None:
            return True
        now = time.monotonic()
        window = self._window
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= config.rate_limit:
            return False
        window.append(now)
        return True

    def _next_fault(self, config: _Config, order_id: str | None) -> Fault | None:
        """Scripted faults for the order, then scripted faults, then a random draw (lock held)."""
        queue = self._order_scripts.get(order_id) if order_id is not None else None
        if queue:
            return queue.popleft()
        if self._script:
            return self._script.popleft()
        if config.fault_rate and self._rng.random() < config.fault_rate:
            return self._rng.choice(config.fault_kinds)
        return None

    def _store(self, order_id: str, document: dict[str, Any]) -> dict[str, Any]:
        """Upsert an order and return the success payload with its stable ids (lock held)."""
        customer = document["customer_info"]
        name = _text(customer["customer_name"])
        phone, email = _text(customer.get("phone")), _text(customer.get("email_id"))
        keys = [(name, "phone", phone)] if phone else []
        if email:
            keys.append((name, "email", email))
        keys = keys or [(name, "", "")]
        customer_id = next((self._customer_ids[key] for key in keys if key in self._customer_ids), None)
        if customer_id is None:
            customer_id = next(self._next_customer_id)
        for key in keys:
            self._customer_ids.setdefault(key, customer_id)

        contacts = document.get("contact_info")
        contact = contacts[0] if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict) else {}
        contact_key = (
            customer_id,
            _text(contact.get("contact_person_phone")) or _text(contact.get("contact_person_email")) or phone or email,
        )
        contact_id = self._contact_ids.get(contact_key)
        if contact_id is None:
            contact_id = self._contact_ids[contact_key] = next(self._next_contact_id)
        enquiry_id = self._enquiry_ids.get(order_id)
        if enquiry_id is None:
            enquiry_id = self._enquiry_ids[order_id] = next(self._next_enquiry_id)

        previous = self._orders.get(order_id)
        updates = 1 if previous is None else previous.updates + 1
        body = document if previous is None else _merge_sections(previous.body, document)
        self._orders[order_id] = _StoredOrder(body, customer_id, enquiry_id, contact_id, updates)
        return _success_payload(customer_id, enquiry_id, contact_id)

    def _search(self, config: _Config, authorization: str | None, document: Any) -> _Reply:
        if not config.authorized(authorization):
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
            keys = self._orders.keys() if wanted is None else [key for key in wanted if key in self._orders]
            payload = {
                "status": "success",
                "message": "Orders fetched successfully",
                "orders": [self._orders[key].body for key in keys],
            }
            return _Reply(200, _json_bytes(payload))

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
            )
        )

    def _control(self, method: str, name: str, query: str, raw: bytes) -> _Reply:
        """The unauthenticated ``/_emulator/...`` inspection and control endpoints."""
        try:
            if method == "GET":
                return self._control_get(name, query)
            if method == "POST":
                return self._control_post(name, raw)
        except (TypeError, ValueError, KeyError) as exc:
            return _failed(400, f"{type(exc).__name__}: {exc}")
        return _failed(405, "Method Not Allowed")

    def _control_get(self, name: str, query: str) -> _Reply:
        payload: Any
        if name == "health":
            payload = {"status": "ok"}
        elif name == "stats":
            payload = self.stats()
        elif name == "config":
            payload = self.config
        elif name == "orders":
            payload = self.orders
        elif name == "requests":
            since = int(parse_qs(query).get("since", ["0"])[0])
            with self._lock:
                start = bisect.bisect_right(self._records, since, key=lambda record: record.seq)
                payload = [asdict(record) for record in self._records[start:]]
        elif name.startswith("orders/"):
            payload = self.stored_order(unquote(name.removeprefix("orders/")))
            if payload is None:
                return _failed(404, "Order not found")
        else:
            return _failed(404, "Not Found")
        return _Reply(200, _json_bytes(payload))

    def _control_post(self, name: str, raw: bytes) -> _Reply:
        if name == "reset":
            self.reset()
            return _Reply(200, _json_bytes({"status": "success"}))
        if name not in ("script", "config"):
            return _failed(404, "Not Found")
        payload = json.loads(raw or b"{}")
        if not isinstance(payload, dict):
            raise ValueError("the body must be a JSON object")
        if name == "config":
            self.configure(**payload)
            return _Reply(200, _json_bytes(self.config))
        faults = payload["faults"]
        if not isinstance(faults, list):
            raise ValueError("faults must be a list")
        if payload.get("order_id") is None:
            self.script(*faults)
        else:
            self.script_for_order(payload["order_id"], *faults)
        return _Reply(200, _json_bytes({"status": "success", "queued": len(faults)}))


def _server_tls(
    cert: str | os.PathLike[str] | None, key: str | os.PathLike[str] | None, client_ca: str | os.PathLike[str] | None
) -> ssl.SSLContext | None:
    """The server's TLS context, or None to serve plain HTTP."""
    if cert is None:
        if key is not None or client_ca is not None:
            raise ValueError("tls_key and client_ca need tls_cert")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


class _Server(ThreadingHTTPServer):
    """Threaded HTTP server that tracks its connections so that stop() can close keep-alive ones.

    With a TLS context, each accepted connection's handshake runs in its own handler thread.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    handshake_timeout = 10.0

    def __init__(self, address: tuple[str, int], emulator: KaptureEmulator, tls: ssl.SSLContext | None) -> None:
        self.emulator = emulator
        self.tls = tls
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        if self.tls is not None:
            connection = self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(self.handshake_timeout)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):  # a client that does not trust us, or that we do not trust
                _drain(request)
                return
            request.settimeout(None)
        super().finish_request(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.socket.getsockname()[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client dropping its connection (reset, broken pipe) is routine here; anything else is a bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _drain(connection: ssl.SSLSocket) -> None:
    """After a failed handshake, read what the client still sends (raw) until it hangs up, so that the
    TLS alert already sent reaches it before the connection closes, not a reset."""
    connection.settimeout(1.0)
    try:
        while socket.socket.recv(connection, 65536):
            pass
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, asks the emulator for the reply and writes it in one ``sendall``."""

    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "kapture-emulator"

    raw_requestline: bytes
    arrived: float
    """When the request line was read (monotonic): the emulated latency counts from it."""
    fields: dict[str, str]
    """The request's header fields, names lower-cased (the last of repeated ones)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Keep stderr quiet: no per-request log lines."""

    def parse_request(self) -> bool:
        """Parse the request line and header fields into :attr:`fields`.

        Replaces BaseHTTPRequestHandler's version, whose email-package header parser costs more than
        all the rest of a request here. HTTP/1.0 and 1.1 only; keep-alive and ``Expect: 100-continue``
        are honoured as in the standard library.
        """
        self.arrived = time.monotonic()  # the request line is in: the latency counts from here
        self.close_connection = True
        self.command, self.request_version = "", self.protocol_version
        self.requestline = self.raw_requestline.decode("latin-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad request line")
            return False
        self.command, self.path, self.request_version = words
        fields: dict[str, str] = {}
        while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            if len(line) > 65536 or len(fields) >= 100:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                return False
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                self.send_error(HTTPStatus.BAD_REQUEST, "Bad header line")
                return False
            fields[name.strip().lower()] = value.strip()
        self.fields = fields
        connection = fields.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            self.request_version == "HTTP/1.0" and connection != "keep-alive"
        )
        return fields.get("expect", "").lower() != "100-continue" or self.handle_expect_100()

    def _handle(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        emulator = self.server.emulator
        reply = emulator._answer(self.command, self.path, self.fields.get("authorization"), raw)
        answer = b"" if reply.reset else self._encode(reply)
        # the latency counts from the request's arrival: reading, handling and encoding are part of it
        if reply.delay and emulator._stopping.wait(max(self.arrived + reply.delay - time.monotonic(), 0.0)):
            self.close_connection = True  # stopped while waiting: drop the connection unanswered
            return
        if reply.reset:
            self._reset_connection()
        else:
            self._send(answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _read_body(self) -> bytes | None:
        if "chunked" in self.fields.get("transfer-encoding", "").lower():
            self.close_connection = True
            self._write(_failed(411, "Content-Length is required"))
            return None
        try:
            length = int(self.fields.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._write(_failed(400, "Invalid Content-Length"))
            return None
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:  # the client hung up mid-body: like a real server, never act on half a request
            self.close_connection = True
            return None
        return raw

    def _write(self, reply: _Reply) -> None:
        self._send(self._encode(reply))

    def _send(self, answer: bytes) -> None:
        # Status line, headers and body leave in a single write: a separate body segment would wait
        # for the client's delayed ACK on keep-alive connections.
        try:
            self.wfile.write(answer)
        except OSError:
            self.close_connection = True

    def _encode(self, reply: _Reply) -> bytes:
        lines = [
            f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER on, zero timeout) instead of answering."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.rfile.close()
        self.connection.close()
