"""A misbehaving Kapture for the hostile-server tests: exact bytes on a raw socket, plain or TLS.

* :class:`HostileServer` accepts connections on loopback (a thread each) and reads the requests on
  them; a *script* ``(request, channel)`` answers each with whatever bytes it likes, when it likes
  (dripped, late, endless, two answers at once, none), and may hang up.
* :func:`run_sync` runs ``SqlToKaptureOrdersOperator`` over a SQLite table of orders O1..O6 and
  returns what the run left: its summary, the ledger, the exception it raised.
* :func:`leaked_secrets` finds a secret, or any piece of it long enough to give part of it away.
* :func:`reset_peak_rss` and :func:`peak_rss_growth` measure this process's peak memory (Linux).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from network_kit import Pki

from kapture_provider.compat import AirflowException
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

SUCCESS = b'{"status": "success", "message": "Order Updated successfully !"}'
ORDER_IDS = ("O1", "O2", "O3", "O4", "O5", "O6")
LEDGER_TABLE = "kapture_order_sync_ledger"
SOURCE_CONN_ID = "hostile_source"
_REASONS = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}


def failed_body(message: str) -> bytes:
    """Kapture's refusal: ``{"status": "failed", "message": ...}``."""
    return json.dumps({"status": "failed", "message": message}).encode()


def http_answer(status: int = 200, body: bytes = SUCCESS, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A well-formed answer (``Content-Length`` framing, keep-alive) with these extra headers."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Request:
    """One request as the server read it."""

    number: int  # 1-based, over the server's life
    connection: int  # 1-based number of the connection it came on
    request_line: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def order_id(self) -> str | None:
        try:
            return str(json.loads(self.body)["order_info"]["order_id"])
        except (ValueError, KeyError, TypeError):
            return None


class Channel:
    """The connection a script answers on. Every wait ends early when the server closes."""

    def __init__(self, sock: socket.socket, stopping: threading.Event):
        self._sock = sock
        self._stopping = stopping
        self.hang_up_after = False
        self.client_gone = False
        self.bytes_sent = 0

    def send(self, data: bytes) -> bool:
        """Send ``data`` in one ``sendall`` (one TLS record up to 16 KiB); False once the client has gone."""
        if self.client_gone:
            return False
        try:
            self._sock.sendall(data)
        except OSError:
            self.client_gone = True
            return False
        self.bytes_sent += len(data)
        return True

    def drip(self, data: bytes, interval: float) -> None:
        """Send ``data`` one byte at a time, ``interval`` seconds apart, until done or the client hangs up."""
        for index in range(len(data)):
            if not self.send(data[index : index + 1]) or self.wait(interval):
                return

    def stream(self, block: bytes, total: int) -> None:
        """Send ``block`` again and again (``total`` bytes in all), until done or the client hangs up."""
        while self.bytes_sent < total and not self._stopping.is_set() and self.send(block):
            pass

    def wait(self, seconds: float) -> bool:
        """Sleep; True if the server is closing meanwhile."""
        return self._stopping.wait(seconds)

    def hang_up(self) -> None:
        """Close the connection once the script returns."""
        self.hang_up_after = True


Script = Callable[[Request, Channel], None]


class HostileServer:
    """A threaded raw-socket HTTP server on 127.0.0.1 answering each request as ``script`` says.

    :param tls: the server's TLS context (``https://``), or ``None`` (plain ``http://``).
    :ivar requests: every request read, in order.
    :ivar channels: the channel each request was answered on, by request number.
    """

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None):
        self.script = script
        self.tls = tls
        self.requests: list[Request] = []
        self.channels: dict[int, Channel] = {}
        self.connections = 0
        self.closed_by_client: set[int] = set()  # connections the client ended (EOF between requests)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def requests_for(self, order_id: str) -> list[Request]:
        """The requests that carried ``order_id``, in order."""
        return [r for r in self.requests if r.order_id == order_id]

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
                number = self.connections
                self._sockets.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock, number), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket, connection: int) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
                with self._lock:
                    self._sockets.append(sock)
            buffer = bytearray()
            while not self._stopping.is_set():
                request = self._read_request(sock, buffer, connection)
                if request is None:
                    self.closed_by_client.add(connection)
                    return
                channel = Channel(sock, self._stopping)
                with self._lock:
                    self.channels[request.number] = channel
                self.script(request, channel)
                if channel.hang_up_after or channel.client_gone:
                    return
        except OSError:
            return  # the client, or close(), ended the connection
        finally:
            sock.close()

    def _read_request(self, sock: socket.socket, buffer: bytearray, connection: int) -> Request | None:
        """The next request on the connection, or ``None`` when the client closed it."""
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                return None
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                return None
            rest += data
        buffer[:] = rest[length:]
        with self._lock:
            request = Request(len(self.requests) + 1, connection, request_line, headers, rest[:length])
            self.requests.append(request)
        return request

    def close(self) -> None:
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading or sending
            except (OSError, ValueError):
                pass
        for thread in self._threads:
            thread.join(timeout=10)
        self._accepting.join(timeout=10)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def server_tls(pki: Pki) -> ssl.SSLContext:
    """The TLS context of a server for 127.0.0.1 with the certificate issued by ``pki.ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context


# -- a real sync over a SQLite table -----------------------------------------------------------------


def customer_of(order_id: str) -> str:
    return f"Customer of {order_id}"


def make_source(path: Path, order_ids: Iterable[str] = ORDER_IDS) -> str:
    """A SQLite file with ``orders(order_id, customer_name)``; the ledger goes in it too. Returns its
    connection's JSON (set it as ``AIRFLOW_CONN_HOSTILE_SOURCE``)."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_name TEXT NOT NULL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(o, customer_of(o)) for o in order_ids])
    return json.dumps({"conn_type": "sqlite", "host": str(path)})


class _TaskInstance:
    """What ``SqlToKaptureOrdersOperator.execute`` uses of a task instance: XCom pushes."""

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


@dataclass
class SyncRun:
    """What one run left: its summary (returned, or pushed before the task failed), the ledger, the error."""

    summary: dict[str, Any]
    ledger: dict[str, dict[str, Any]]
    error: AirflowException | None = None
    texts: list[str] = field(default_factory=list)  # the summary as XCom JSON and the exception's text

    def status(self) -> dict[str, str]:
        return {order_id: row["status"] for order_id, row in self.ledger.items()}


def run_sync(source: Path, kapture_conn_id: str, **operator_kwargs: Any) -> SyncRun:
    """Sync the table of :func:`make_source` to Kapture, one order at a time (in order O1..O6)."""
    ti = _TaskInstance()
    operator = SqlToKaptureOrdersOperator(
        task_id="hostile_sync",
        sql_conn_id=SOURCE_CONN_ID,
        sql="SELECT order_id, customer_name FROM orders ORDER BY order_id",
        kapture_conn_id=kapture_conn_id,
        **{"max_concurrency": 1, "failure_floor": len(ORDER_IDS), **operator_kwargs},
    )
    error: AirflowException | None = None
    try:
        summary = operator.execute({"ti": ti})  # type: ignore[arg-type]
    except AirflowException as err:  # the task fails after every order was dealt with; the summary was pushed
        error, summary = err, ti.xcom.get("return_value")
    assert summary is not None, f"the run left no summary: {error!r}"
    texts = [json.dumps(summary, default=str), *([f"{error} {error!r}"] if error else [])]
    return SyncRun(summary, ledger_rows(source), error, texts)


def ledger_rows(path: Path) -> dict[str, dict[str, Any]]:
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return {row["order_id"]: dict(row) for row in conn.execute(f"SELECT * FROM {LEDGER_TABLE}")}


# -- secrets and memory ---------------------------------------------------------------------------


def leaked_secrets(texts: Mapping[str, str], secrets: Mapping[str, str], piece: int = 8) -> list[str]:
    """Where a secret, or any ``piece``-character part of it, appears: ``"<text name>: <secret name>"``."""
    found = []
    for secret_name, secret in secrets.items():
        parts = {secret[i : i + piece] for i in range(len(secret) - piece + 1)} or {secret}
        for text_name, text in texts.items():
            if any(part in text for part in parts):
                found.append(f"{text_name}: {secret_name}")
    return found


def reset_peak_rss() -> int:
    """Reset this process's peak resident size to its current one (Linux ``clear_refs``); returns it, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmHWM") * 1024


def peak_rss_growth(baseline: int) -> int:
    """How far the peak resident size rose above ``baseline`` (bytes) since :func:`reset_peak_rss`."""
    return _status_kib("VmHWM") * 1024 - baseline


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/self/status has no {field_name}")
