"""The answer reader on a real socket pair: every way HTTP/1.1 delimits a body, and what is not HTTP."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator

import pytest

from kapture_provider.hooks.http_answer import RawAnswer, read_answer

pytestmark = pytest.mark.unit

JSON = b'{"status": true, "message": "Order updated"}'


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, server = socket.socketpair()
    ours.settimeout(5)
    yield ours, server
    ours.close()
    server.close()


def answer_to(pair: tuple[socket.socket, socket.socket], wire: bytes, *, then_close: bool = False) -> RawAnswer:
    ours, server = pair
    server.sendall(wire)
    if then_close:
        server.shutdown(socket.SHUT_WR)
    return read_answer(ours)


def test_content_length_body_keeps_the_connection_for_the_next_answer(pair) -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(JSON), JSON)
    next_answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n"

    first = answer_to(pair, wire)
    second = answer_to(pair, next_answer)

    assert (first.status, first.body, first.will_close) == (200, JSON, False)
    assert first.headers["content-type"] == "application/json"
    assert (second.status, second.body, second.headers["retry-after"]) == (429, b"", "2")


def test_chunked_body_with_extensions_and_trailers(pair) -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\n" + JSON[:5] + b"\r\n"
        b"%x\r\n" % (len(JSON) - 5) + JSON[5:] + b"\r\n"
        b"0\r\nX-Trailer: yes\r\n\r\n"
    )

    answer = answer_to(pair, wire)

    assert (answer.status, answer.body, answer.will_close) == (200, JSON, False)


def test_body_without_length_runs_to_the_close(pair) -> None:
    answer = answer_to(pair, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + JSON, then_close=True)

    assert (answer.status, answer.body, answer.will_close) == (200, JSON, True)


def test_interim_answers_are_skipped(pair) -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"

    answer = answer_to(pair, wire)

    assert (answer.status, answer.body) == (201, b"{}")


@pytest.mark.parametrize(
    ("head", "will_close"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n", True),
        (b"HTTP/1.0 200 OK\r\n", True),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Upgrade\r\n", False),
    ],
)
def test_whether_the_server_closes_after_the_answer(pair, head: bytes, will_close: bool) -> None:
    answer = answer_to(pair, head + b"Content-Length: 2\r\n\r\n{}")

    assert (answer.body, answer.will_close) == (b"{}", will_close)


def test_repeated_and_folded_header_lines_are_joined(pair) -> None:
    wire = b"HTTP/1.1 204 No Content\r\nVia: 1.1 a\r\nVIA: 1.1 b\r\nX-Note: one\r\n  two\r\n\r\n"

    answer = answer_to(pair, wire)

    assert answer.headers == {"via": "1.1 a, 1.1 b", "x-note": "one two"}
    assert answer.body == b""


def test_a_connection_closed_before_any_answer_is_a_disconnect(pair) -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        answer_to(pair, b"", then_close=True)


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + JSON,  # shorter than announced
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + JSON,  # a chunk cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n" + JSON,  # a chunk size that is not hex
        b"HTTP/1.1 200 OK\r\nContent-",  # closed within the headers
    ],
)
def test_an_answer_cut_off_is_an_incomplete_read(pair, wire: bytes) -> None:
    with pytest.raises(http.client.IncompleteRead):
        answer_to(pair, wire, then_close=True)


@pytest.mark.parametrize(
    "wire",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
    ids=["not-http", "no-status-code", "no-colon", "two-lengths", "negative-length", "101-headers", "long-line"],
)
def test_what_is_not_http_is_an_http_exception(pair, wire: bytes) -> None:
    with pytest.raises(http.client.HTTPException) as caught:
        answer_to(pair, wire, then_close=True)

    assert not isinstance(caught.value, http.client.IncompleteRead | http.client.RemoteDisconnected)
