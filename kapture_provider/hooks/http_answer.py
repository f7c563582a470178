"""Read one HTTP/1.1 answer from a connected socket: status, headers and the whole body.

The standard library's parser (``http.client``, under urllib3 too) reads headers with the ``email``
package: under 8 sending threads that was a quarter of a whole sync's CPU, for answers of a handful of
headers. This reads the same answers (a body delimited by ``Content-Length``, chunked, or by the
close; interim 1xx answers skipped; folded header lines joined) and raises ``http.client``'s own
exceptions, so failures are named as before: :class:`~http.client.RemoteDisconnected` for a
connection closed before the answer, :class:`~http.client.IncompleteRead` for a body cut off,
another :class:`~http.client.HTTPException` for anything that is not HTTP.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass
from typing import IO, Any

_MAX_LINE = 65_536  # as http.client: longer status or header lines are not HTTP we can use
_MAX_HEADERS = 100
_NO_BODY = frozenset({204, 304})
_HEX_DIGITS = b"0123456789abcdefABCDEF"


@dataclass(frozen=True)
class RawAnswer:
    """An answer read in full. ``headers`` has lower-case names; ``will_close``: the server ends the
    connection after it (``Connection: close``, HTTP/1.0, or a body that runs to the close)."""

    status: int
    headers: dict[str, str]
    body: bytes
    will_close: bool


def read_answer(sock: socket.socket | Any) -> RawAnswer:
    """Read the answer to the request just sent on ``sock`` (a socket, TLS socket or urllib3 TLS-in-TLS
    transport). Requests are not pipelined, so nothing follows the answer until the next request."""
    stream = sock.makefile("rb")
    try:
        version, status = _status_line(stream, first=True)
        headers = _headers(stream)
        while 100 <= status < 200:  # 100 Continue and the like: the real answer follows
            version, status = _status_line(stream, first=False)
            headers = _headers(stream)
        connection = _tokens(headers.get("connection"))
        will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
        if status in _NO_BODY:
            return RawAnswer(status, headers, b"", will_close)
        codings = _tokens(headers.get("transfer-encoding"))
        if codings and codings[-1] == "chunked":
            return RawAnswer(status, headers, _chunked_body(stream), will_close)
        length = headers.get("content-length")
        if length is None or codings:  # no length given: the body runs to the close
            return RawAnswer(status, headers, stream.read(), True)
        return RawAnswer(status, headers, _exactly(stream, _content_length(length)), will_close)
    finally:
        stream.close()


def _status_line(stream: IO[bytes], *, first: bool) -> tuple[str, int]:
    line = stream.readline(_MAX_LINE + 1)
    if not line:
        if first:
            raise http.client.RemoteDisconnected("the server closed the connection without an answer")
        raise http.client.IncompleteRead(b"")
    if len(line) > _MAX_LINE:
        raise http.client.LineTooLong("status line")
    parts = line.decode("latin-1").rstrip("\r\n").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise http.client.BadStatusLine(line.decode("latin-1")[:80])
    return parts[0], int(parts[1])


def _headers(stream: IO[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    name = ""
    for _ in range(_MAX_HEADERS + 1):
        line = stream.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n"):
            return headers
        if not line.endswith(b"\n"):
            raise http.client.IncompleteRead(b"")  # closed in the middle of the headers
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and name:  # an obsolete folded line continues the previous header
            headers[name] = f"{headers[name]} {text.strip()}"
            continue
        name, colon, value = text.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise http.client.HTTPException(f"not a header line: {text[:80]!r}")
        value = value.strip()
        if name in headers and name != "content-length":
            headers[name] = f"{headers[name]}, {value}"  # repeated fields are one comma-separated list
        elif name == "content-length" and headers.get(name, value) != value:
            raise http.client.HTTPException("conflicting Content-Length headers")
        else:
            headers[name] = value
    raise http.client.HTTPException(f"more than {_MAX_HEADERS} headers")


def _tokens(value: str | None) -> list[str]:
    return [token.strip().lower() for token in value.split(",")] if value else []


def _content_length(value: str) -> int:
    if not value.isdigit():
        raise http.client.HTTPException(f"invalid Content-Length: {value[:40]!r}")
    return int(value)


def _exactly(stream: IO[bytes], length: int) -> bytes:
    data = stream.read(length)
    if len(data) < length:
        raise http.client.IncompleteRead(data, length - len(data))
    return data


def _chunked_body(stream: IO[bytes]) -> bytes:
    chunks: list[bytes] = []
    while True:
        line = stream.readline(_MAX_LINE + 1)
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or size_text.strip(_HEX_DIGITS):
            raise http.client.IncompleteRead(b"".join(chunks))  # as http.client: cut off, or garbled
        size = int(size_text, 16)
        if size == 0:
            _headers(stream)  # trailer fields, up to the blank line that ends the answer
            return b"".join(chunks)
        chunks.append(_exactly(stream, size))
        if stream.read(2) != b"\r\n":
            raise http.client.IncompleteRead(b"".join(chunks))
