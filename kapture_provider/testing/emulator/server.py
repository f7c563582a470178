"""The emulator's HTTP/1.1 server: the standard library's ``http.server``, plain or TLS, keep-alive.

Requests are parsed by ``BaseHTTPRequestHandler`` itself, so the client is tested against a parser this
project did not write. The handler checks the Host header and the body's framing, then hands the request
to Kapture's behaviour or to the control endpoints, and writes each answer in one segment.
"""

from __future__ import annotations

import os
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kapture_provider.testing.emulator import control
from kapture_provider.testing.emulator.answers import Reply, failed
from kapture_provider.testing.emulator.kapture import KaptureApi

MAX_BODY = 16 * 1024 * 1024
"""The largest request body read (Kapture's orders are a few KB); a larger one is refused with 413."""
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def server_tls(
    cert: str | os.PathLike[str] | None, key: str | os.PathLike[str] | None, client_ca: str | os.PathLike[str] | None
) -> ssl.SSLContext | None:
    """The server's TLS context (requiring client certificates when given ``client_ca``), or None."""
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


def host_in_url(host: str) -> str:
    """A host as written in a URL or a Host header: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class EmulatorServer(ThreadingHTTPServer):
    """Threaded HTTP server that tracks its connections so that stop() can close keep-alive ones.

    With a TLS context, each accepted connection's handshake runs in its own handler thread.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    handshake_timeout = 10.0

    def __init__(
        self, address: tuple[str, int], api: KaptureApi, tls: ssl.SSLContext | None, stopping: threading.Event
    ) -> None:
        self.api = api
        self.tls = tls
        self.stopping = stopping
        self.scheme = "http" if tls is None else "https"
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.own_hosts = self.hosts_at(address[0])

    def hosts_at(self, host: str) -> frozenset[str]:
        """The Host header values that name this server when reached at ``host``."""
        names = {host_in_url(name).lower() for name in (*_LOOPBACK_NAMES, host)}
        default_port = {"http": 80, "https": 443}[self.scheme] == self.server_port
        return frozenset({f"{name}:{self.server_port}" for name in names} | (names if default_port else set()))

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
        # A client dropping its connection (reset, broken pipe, TLS EOF) is routine here; anything else is a bug.
        if not isinstance(sys.exc_info()[1], OSError):
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


class Handler(BaseHTTPRequestHandler):
    """Checks a parsed request, asks Kapture's behaviour or the control endpoints for the answer, sends it."""

    server: EmulatorServer
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # an unparseable request line is answered with a status line
    server_version = "kapture-emulator"
    wbufsize = 65536
    """Buffered writes: the status line, headers and body leave together when the handler flushes,
    since a separate body segment would wait for the client's delayed ACK on keep-alive connections."""

    def setup(self) -> None:
        super().setup()
        local = self.connection.getsockname()[0]
        self.own_hosts = self.server.own_hosts | self.server.hosts_at(local)
        self.own_origins = frozenset(f"{self.server.scheme}://{host}" for host in self.own_hosts)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep stderr quiet: no per-request log lines."""

    def handle_expect_100(self) -> bool:
        accepted = super().handle_expect_100()
        self.wfile.flush()  # the client waits for the 100 before it sends the body
        return accepted

    def _handle(self) -> None:
        arrived = time.monotonic()  # the emulated latency counts from here
        refused = self._host_refusal() or self._framing_refusal()
        if refused is not None:
            self.close_connection = True  # the body, if any, is left unread
            self._send(refused)
            return
        raw = self._read_body()
        if raw is None:
            return
        reply = self._answer(raw)
        # the latency counts from the request's arrival: reading and handling are part of it
        if reply.delay and self.server.stopping.wait(max(arrived + reply.delay - time.monotonic(), 0.0)):
            self.close_connection = True  # stopped while waiting: drop the connection unanswered
            return
        if reply.reset:
            self._reset_connection()
        else:
            self._send(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _answer(self, raw: bytes) -> Reply:
        authorization = self.headers.get("Authorization")
        if not self.path.startswith(control.CONTROL_PREFIX):
            return self.server.api.answer(self.command, self.path, authorization, raw)
        refused = control.refusal(self.command, self.headers, self.client_address[0], self.own_origins)
        if refused is not None:
            return refused
        return control.answer(self.server.api, self.command, self.path, authorization, raw)

    def _host_refusal(self) -> Reply | None:
        """400 without exactly one Host header, 421 when it names another server (DNS rebinding)."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            return failed(400, "Exactly one Host header is required")
        if hosts[0].strip().lower() not in self.own_hosts:
            return failed(421, "The Host header names another server")
        return None

    def _framing_refusal(self) -> Reply | None:
        """The body must be framed by one plain Content-Length (no chunked bodies) within :data:`MAX_BODY`."""
        if self.headers.get("Transfer-Encoding") is not None:
            return failed(411, "Content-Length is required")
        lengths = set(self.headers.get_all("Content-Length") or ["0"])
        length = lengths.pop().strip() if len(lengths) == 1 else ""
        if not (length.isascii() and length.isdigit()):
            return failed(400, "Invalid Content-Length")
        if int(length) > MAX_BODY:
            return failed(413, "Request body too large")
        return None

    def _read_body(self) -> bytes | None:
        """The body, or None when the client hung up before it all arrived (never act on half a request)."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            self.close_connection = True
            return None
        return raw

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER on, zero timeout) instead of answering."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.rfile.close()
        self.connection.close()  # the socket closes for real when finish() closes the buffered writer
