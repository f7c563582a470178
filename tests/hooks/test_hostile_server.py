"""A hostile Kapture, plain and TLS: whatever it answers fails one order, never the run, and is never
credited to another order; our own secrets never come back out of its words.

Each case is a real sync (``SqlToKaptureOrdersOperator`` over SQLite orders O1..O6, one at a time, no
retries) against :class:`~hostile_kit.HostileServer`, which answers O3 in the hostile way and refuses O4
with a message of its own: an answer left over from O3's exchange and read as O4's shows up as O4
delivered. Afterwards the ledger and the run summary are read; the cause of O3's failure is the one the
hook raises when O3 is sent again on its own, whose text must be the one in the ledger. Cases a sync adds
nothing to (the body cap's boundary, a proxy's refusal, credentials in Host) are hook-level.
"""

from __future__ import annotations

import base64
import gzip
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_kit import (
    ORDER_IDS,
    SOURCE_CONN_ID,
    SUCCESS,
    Channel,
    HostileServer,
    Request,
    Script,
    SyncRun,
    customer_of,
    failed_body,
    http_answer,
    leaked_secrets,
    make_source,
    peak_rss_growth,
    reset_peak_rss,
    run_sync,
    server_tls,
)
from network_kit import Pki

from kapture_provider.compat import AirflowFailException
from kapture_provider.exceptions import (
    Cause,
    KaptureConnectionError,
    KaptureError,
    KaptureRejectedError,
    KaptureTransientError,
)
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.payload import prepare_order

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("clean_environment")]

CONN_ID = "kapture_hostile"
LOGIN = "sync-robot"
HOSTILE, REFUSED = "O3", "O4"  # O3 gets the hostile answer; O4, next on the same connection, is refused
REFUSAL = "Order Updation Failed: O4 is closed"
DELIVERED = "delivered"
FAILED = "failed"
TIMEOUT = 2.0  # read timeout of the cases that do not wait for it
SHORT_TIMEOUT = 1.0  # read timeout of the slow-answer cases
OFFERED = 2 * 1024**3  # what the oversized answers offer: 2 GiB
BLOCK = 64 * 1024


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(params=["http", "https"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(scheme: str, pki: Pki) -> Iterator[Callable[[Script], HostileServer]]:
    """Factory: a :class:`HostileServer` running ``script``, plain or TLS as ``scheme`` says."""
    servers: list[HostileServer] = []

    def start(script: Script) -> HostileServer:
        server = HostileServer(script, server_tls(pki) if scheme == "https" else None)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def connect(kapture_conn_env: Callable[..., str], pki: Pki) -> Callable[..., str]:
    """``connect(server, password=..., **extra)``: point the Kapture connection at ``server``, no retries."""

    def point(server: HostileServer, *, password: str = "kapture-password", **extra: Any) -> str:
        extras = {"timeout": TIMEOUT, "connect_timeout": 5, "max_retries": 0, **extra}
        if server.tls is not None:
            extras["ca_bundle"] = str(pki.ca)
        return kapture_conn_env(CONN_ID, host=server.url, login=LOGIN, password=password, extra=extras)

    return point


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The SQLite table of orders O1..O6 (the ledger goes in it too)."""
    path = tmp_path / "orders.db"
    monkeypatch.setenv(f"AIRFLOW_CONN_{SOURCE_CONN_ID.upper()}", make_source(path))
    return path


# -- scripts and checks -----------------------------------------------------------------------------


def kapture(hostile: Script) -> Script:
    """A Kapture that answers O3 with ``hostile``, refuses O4, and accepts every other order."""

    def script(request: Request, channel: Channel) -> None:
        if request.order_id == HOSTILE:
            hostile(request, channel)
        elif request.order_id == REFUSED:
            channel.send(http_answer(400, failed_body(REFUSAL)))
        else:
            channel.send(http_answer())

    return script


def raw(data: bytes, *, hang_up: bool = False) -> Script:
    """Answer with exactly ``data`` (and close the connection after it, if ``hang_up``)."""

    def script(request: Request, channel: Channel) -> None:
        channel.send(data)
        if hang_up:
            channel.hang_up()

    return script


def order_body(order_id: str) -> bytes:
    """The body the sync sends for ``order_id``."""
    return prepare_order(
        {"customer_info": {"customer_name": customer_of(order_id)}, "order_info": {"order_id": order_id}}
    ).data


def send_alone(order_id: str) -> KaptureError:
    """Send one order through a fresh hook; the error it raises (the test fails if none)."""
    hook = KaptureHook(CONN_ID)
    try:
        with pytest.raises(KaptureError) as raised:
            hook.post_order(order_body(order_id), order_id=order_id)
    finally:
        hook.close()
    return raised.value


def assert_statuses(run: SyncRun, **failed: str) -> None:
    """Every order delivered but those named (``O3=FAILED``); the summary counts and lists the same."""
    expected = {order_id: FAILED if order_id in failed else DELIVERED for order_id in ORDER_IDS}
    assert run.status() == expected, {k: (v["status"], v["last_error"]) for k, v in run.ledger.items()}
    summary = run.summary
    assert (summary["rows_read"], summary["to_send"]) == (len(ORDER_IDS), len(ORDER_IDS))
    assert (summary["succeeded"], summary["failed"]) == (len(ORDER_IDS) - len(failed), len(failed))
    assert {o["order_id"]: o["error"] for o in summary["failed_orders"]} == {
        order_id: run.ledger[order_id]["last_error"] for order_id in failed
    }


def assert_o4_refused_by_its_own_answer(run: SyncRun, server: HostileServer) -> None:
    """O4 was refused, quoting the answer the server sent to O4 itself."""
    o4 = run.ledger[REFUSED]
    assert o4["refusals"] == 1 and REFUSAL in o4["last_error"], o4
    assert [r.order_id for r in server.requests[: len(ORDER_IDS)]] == list(ORDER_IDS)  # each sent once, in order


def assert_o3_failed_alone(run: SyncRun, server: HostileServer, cause: Cause | set[Cause]) -> None:
    """O3 failed transiently with ``cause`` (the ledger holds that error's text), on a connection that was
    closed, not reused for O4; O4 was refused by its own answer; the rest were delivered."""
    assert_statuses(run, O3=FAILED, O4=FAILED)
    assert_o4_refused_by_its_own_answer(run, server)
    assert run.ledger[HOSTILE]["refusals"] == 0  # not Kapture refusing the order: a failure to retry
    first_o3, first_o4 = server.requests_for(HOSTILE)[0], server.requests_for(REFUSED)[0]
    assert first_o4.connection != first_o3.connection, "O3's connection was used again"
    error = send_alone(HOSTILE)
    assert isinstance(error, KaptureTransientError), repr(error)
    assert error.cause in (cause if isinstance(cause, set) else {cause}), (error.cause, error.message)
    assert error.order_id == HOSTILE
    assert run.ledger[HOSTILE]["last_error"] == error.message


# -- malformed answers ------------------------------------------------------------------------------

CHUNKED_SUCCESS = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SUCCESS), SUCCESS)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
MALFORMED: dict[str, Script] = {
    # Latin-1 0xB2 is '²', which str.isdigit() takes for a digit
    "unicode-content-length": raw(HEAD + b"Content-Length: \xb2\r\n\r\n" + SUCCESS, hang_up=True),
    "unicode-status": raw(b"HTTP/1.1 \xb200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SUCCESS), SUCCESS)),
    "chunk-size-2^63": raw(HEAD + b"Transfer-Encoding: chunked\r\n\r\n8000000000000000\r\n" + SUCCESS, hang_up=True),
    "content-length-10^15": raw(HEAD + b"Content-Length: 1000000000000000\r\n\r\n" + SUCCESS, hang_up=True),
    "two-content-lengths": raw(
        HEAD + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s" % (len(SUCCESS), len(SUCCESS) + 5, SUCCESS)
    ),
    "content-length-and-chunked": raw(
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_SUCCESS
    ),
    "nul-in-a-header": raw(http_answer(headers=[("X-Trace", "ab\x00cd")])),
    "header-line-70-kb": raw(http_answer(headers=[("X-Padding", "p" * 70_000)])),
    "101-headers": raw(http_answer(headers=[(f"X-Header-{i}", "v") for i in range(99)])),  # + its 2 own
    "garbage-status-line": raw(b"HTTP/1.1 OK-ish\r\nContent-Length: %d\r\n\r\n%s" % (len(SUCCESS), SUCCESS)),
}
#: Sizes larger than any answer: a Content-Length over the cap is refused before the body is read; a chunk
#: that announces 2^63 bytes and ends at the close is cut off (http.client reads chunk sizes itself).
LARGER_THAN_ANY_ANSWER: dict[str, set[Cause]] = {
    "chunk-size-2^63": {Cause.CUT_OFF, Cause.TOO_LARGE},
    "content-length-10^15": {Cause.TOO_LARGE},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_answer_fails_that_order_alone(
    case: str, serve: Callable[[Script], HostileServer], connect: Callable[..., str], source: Path
) -> None:
    server = serve(kapture(MALFORMED[case]))

    run = run_sync(source, connect(server))

    assert_o3_failed_alone(run, server, LARGER_THAN_ANY_ANSWER.get(case, {Cause.INVALID_HTTP}))


def test_an_answer_compressed_although_we_asked_for_identity_is_decoded(
    serve: Callable[[Script], HostileServer], connect: Callable[..., str], source: Path
) -> None:
    """We send ``Accept-Encoding: identity``; a gateway that gzips anyway is decoded (within the cap), so
    O3's success counts, and O4 still gets its own answer."""
    server = serve(kapture(raw(http_answer(body=gzip.compress(SUCCESS), headers=[("Content-Encoding", "gzip")]))))

    run = run_sync(source, connect(server))

    assert {r.headers.get("accept-encoding") for r in server.requests} == {"identity"}
    assert_statuses(run, O4=FAILED)
    assert_o4_refused_by_its_own_answer(run, server)


def test_a_content_coding_we_cannot_read_fails_that_order_alone(
    serve: Callable[[Script], HostileServer], connect: Callable[..., str], source: Path
) -> None:
    server = serve(kapture(raw(http_answer(body=b"\x00\x01 not json", headers=[("Content-Encoding", "x-custom")]))))

    run = run_sync(source, connect(server))

    assert_o3_failed_alone(run, server, Cause.INVALID_HTTP)


def test_bare_lf_answer_with_a_length_is_read_as_it_is(
    serve: Callable[[Script], HostileServer], connect: Callable[..., str], source: Path
) -> None:
    """http.client (under urllib3) reads bare-LF status and header lines, as RFC 9112 allows: O3 is
    delivered, and O4 still gets its own answer."""
    bare = http_answer().replace(b"\r\n", b"\n")
    server = serve(kapture(raw(bare)))

    run = run_sync(source, connect(server))

    assert_statuses(run, O4=FAILED)
    assert_o4_refused_by_its_own_answer(run, server)


def test_bare_lf_chunks_fail_that_order_alone(
    serve: Callable[[Script], HostileServer], connect: Callable[..., str], source: Path
) -> None:
    """http.client takes the two bytes after a chunk for its CRLF: a bare-LF chunked body does not frame
    for it. O3 fails (malformed or cut off, whichever the library reports), never delivered, and its
    connection is not used again."""
    bare = (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_SUCCESS).replace(b"\r\n", b"\n")
    server = serve(kapture(raw(bare)))

    run = run_sync(source, connect(server))

    assert_o3_failed_alone(run, server, {Cause.INVALID_HTTP, Cause.CUT_OFF})


# -- slow answers: one deadline for the whole answer ------------------------------------------------


def drip(request: Request, channel: Channel) -> None:
    channel.drip(http_answer(), interval=SHORT_TIMEOUT / 4)


def flood_of_1xx(request: Request, channel: Channel) -> None:
    for _ in range(200):  # 20 s of interim answers, each well within the read timeout of the one before
        if not channel.send(b"HTTP/1.1 100 Continue\r\n\r\n") or channel.wait(SHORT_TIMEOUT / 10):
            return
    channel.send(http_answer())


def late_answer(request: Request, channel: Channel) -> None:
    """A success, sent after the client gave up: on a connection reused, the next order would read it."""
    if not channel.wait(SHORT_TIMEOUT + 1):
        channel.send(http_answer())


SLOW: dict[str, Script] = {"drip": drip, "flood-of-1xx": flood_of_1xx, "late-answer-then-reuse": late_answer}


@pytest.mark.parametrize("case", list(SLOW))
def test_slow_answer_fails_that_order_within_one_read_timeout(
    case: str, serve: Callable[[Script], HostileServer], connect: Callable[..., str], source: Path
) -> None:
    server = serve(kapture(SLOW[case]))

    run = run_sync(source, connect(server, timeout=SHORT_TIMEOUT))

    assert_o3_failed_alone(run, server, Cause.READ_TIMEOUT)
    if case == "drip":  # the client hung up before the answer was complete
        assert server.channels[server.requests_for(HOSTILE)[0].number].bytes_sent < len(http_answer())


# -- oversized answers: a cap, memory flat ----------------------------------------------------------


def two_gigabytes(request: Request, channel: Channel) -> None:
    if channel.send(HEAD + b"Content-Length: %d\r\n\r\n" % OFFERED):
        channel.stream(b" " * BLOCK, OFFERED)


def endless_chunks(request: Request, channel: Channel) -> None:
    if channel.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n"):
        channel.stream(b"%x\r\n%s\r\n" % (BLOCK, b" " * BLOCK), OFFERED)


OVERSIZED: dict[str, Script] = {"content-length-2-gib": two_gigabytes, "endless-chunked": endless_chunks}


@pytest.mark.parametrize("case", list(OVERSIZED))
def test_oversized_answer_fails_that_order_with_memory_flat(
    case: str, serve: Callable[[Script], HostileServer], connect: Callable[..., str], source: Path
) -> None:
    server = serve(kapture(OVERSIZED[case]))
    conn_id = connect(server)
    baseline = reset_peak_rss()

    run = run_sync(source, conn_id)

    growth = peak_rss_growth(baseline)
    assert growth < 100 * 1024**2, f"the peak RSS grew by {growth / 1024**2:.0f} MiB"  # of the 2 GiB offered
    assert server.channels[server.requests_for(HOSTILE)[0].number].bytes_sent < OFFERED  # the client hung up
    assert_o3_failed_alone(run, server, Cause.TOO_LARGE)


def test_body_at_the_cap_is_read_and_one_byte_over_is_not(
    serve: Callable[[Script], HostileServer], connect: Callable[..., str]
) -> None:
    from kapture_provider.hooks.transport import MAX_ANSWER_BYTES

    def script(request: Request, channel: Channel) -> None:
        size = MAX_ANSWER_BYTES + (request.order_id == "OVER")
        channel.send(http_answer(body=SUCCESS.ljust(size)))  # JSON allows the trailing spaces

    server = serve(script)
    connect(server)
    hook = KaptureHook(CONN_ID)
    try:
        assert hook.post_order(order_body("AT"), order_id="AT")["status"] == "success"
        with pytest.raises(KaptureTransientError) as raised:
            hook.post_order(order_body("OVER"), order_id="OVER")
    finally:
        hook.close()
    assert raised.value.cause == Cause.TOO_LARGE


# -- an answer belongs to its request ---------------------------------------------------------------

STRAY = http_answer(body=b'{"status": "success", "message": "an answer nobody asked for"}')


def padded_success(size: int) -> bytes:
    """A success answer of exactly ``size`` bytes (its body padded with spaces)."""
    body = SUCCESS
    while len(answer := http_answer(body=body)) != size:
        body = SUCCESS.ljust(len(body) + size - len(answer))
    return answer


PADDED = {
    "extra-in-the-same-read": 300,  # both answers in the first read of the answer
    "extra-in-the-tls-layer": io.DEFAULT_BUFFER_SIZE,  # the first read ends with the first answer
    "extra-split-across-reads": 12_000,
}


@pytest.mark.parametrize("padding", list(PADDED))
def test_extra_answer_sent_with_an_answer_is_never_the_next_orders(
    padding: str, serve: Callable[[Script], HostileServer], connect: Callable[..., str], source: Path
) -> None:
    """B1 (O3) is answered by a padded success and an unrequested success in one write (one TLS record);
    B2 (O4) is refused, on whatever connection it comes: B2 must be recorded refused, never delivered."""
    server = serve(kapture(raw(padded_success(PADDED[padding]) + STRAY)))

    run = run_sync(source, connect(server))

    assert_statuses(run, O4=FAILED)
    assert_o4_refused_by_its_own_answer(run, server)
    assert server.requests_for(REFUSED)[0].connection != server.requests_for(HOSTILE)[0].connection


def test_answer_sent_before_the_request_is_never_that_orders(
    serve: Callable[[Script], HostileServer], connect: Callable[..., str]
) -> None:
    """The server answers O2 and, once the client has read that answer, sends a success "for O3" before
    O3's request was even sent; O3 itself is refused. The idle connection had bytes waiting: it is not
    used for O3.

    Hook-level: the server and the client wait for each other here, which a sync cannot do."""
    o2_read, stray_sent = threading.Event(), threading.Event()

    def script(request: Request, channel: Channel) -> None:
        if request.order_id == "O2":
            channel.send(http_answer())
            if o2_read.wait(30):
                channel.send(STRAY)
                stray_sent.set()
        elif request.order_id == HOSTILE:
            channel.send(http_answer(400, failed_body("Order Updation Failed: O3 is closed")))
        else:
            channel.send(http_answer())

    server = serve(script)
    connect(server)
    hook = KaptureHook(CONN_ID)
    try:
        assert hook.post_order(order_body("O2"), order_id="O2")["status"] == "success"
        o2_read.set()
        assert stray_sent.wait(30)
        time.sleep(0.2)  # the kernel hands loopback bytes to the receiving socket a moment after sendall
        with pytest.raises(KaptureRejectedError, match="O3 is closed"):
            hook.post_order(order_body(HOSTILE), order_id=HOSTILE)
        assert hook.post_order(order_body("O5"), order_id="O5")["status"] == "success"
    finally:
        hook.close()
    assert server.requests_for(HOSTILE)[0].connection != server.requests_for("O2")[0].connection


# -- our secrets never come back out of someone else's text ------------------------------------------

FILLER = ("Request rejected by the web application firewall; the request headers follow. " * 2)[:144]


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("position", ["at-the-start", "near-the-cut"])
def test_reflected_authorization_is_cleaned_before_the_cut(
    status: int,
    position: str,
    serve: Callable[[Script], HostileServer],
    connect: Callable[..., str],
    source: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A failed answer quoting our Authorization header (the token starts at character 6, or at 150 of
    the 160 kept): neither the token nor any 8 characters of it, nor the password, is left anywhere."""
    password = f"Pw-{uuid.uuid4().hex}"
    token = base64.b64encode(f"{LOGIN}:{password}".encode()).decode("ascii")
    prefix = FILLER if position == "near-the-cut" else ""

    def echo(request: Request, channel: Channel) -> None:
        message = f"{prefix}{request.headers['authorization']} rejected by the gateway"
        channel.send(http_answer(status, failed_body(message)))

    server = serve(kapture(echo))
    caplog.set_level(logging.INFO)

    run = run_sync(source, connect(server, password=password), failure_floor=0)
    error = send_alone(HOSTILE)

    assert server.requests_for(HOSTILE)[0].headers["authorization"] == f"Basic {token}"  # it was echoed
    assert_statuses(run, O3=FAILED, O4=FAILED)
    assert run.error is not None  # the task failed, after every other order was dealt with
    stored = run.ledger[HOSTILE]["last_error"]
    assert ("web application firewall" if prefix else "rejected by the gateway") in stored  # the message is kept
    out, err = capfd.readouterr()
    texts = {
        "ledger last_error": "\n".join(str(row["last_error"]) for row in run.ledger.values()),
        "summary and task exception": "\n".join(run.texts),
        "task log": caplog.text + out + err,
        "hook exception": f"{error} {error!r} {error.message}",
    }
    assert "Not delivered" in texts["task log"]  # the log searched is the run's
    assert not leaked_secrets(texts, {"the Basic token": token, "the password": password})


@pytest.mark.parametrize("where", ["status-line", "body"])
def test_proxy_refusal_quoting_its_token_is_not_repeated(where: str, kapture_conn_env: Callable[..., str]) -> None:
    proxy_password = f"proxy-{uuid.uuid4().hex}"
    proxy_token = base64.b64encode(f"proxy-user:{proxy_password}".encode()).decode("ascii")

    def refuse(request: Request, channel: Channel) -> None:
        quoted = request.headers.get("proxy-authorization", "")
        reason = f"Proxy Authentication Required ({quoted} not accepted)" if where == "status-line" else "Denied"
        body = f"<html><p>credentials {quoted} not accepted</p></html>".encode()
        head = f"HTTP/1.1 407 {reason}\r\nProxy-Authenticate: Basic realm=gw\r\nContent-Length: {len(body)}\r\n\r\n"
        channel.send(head.encode("latin-1") + body)
        channel.hang_up()

    with HostileServer(refuse) as proxy:
        extra = {"max_retries": 0, "proxy": f"http://proxy-user:{proxy_password}@127.0.0.1:{proxy.port}"}
        kapture_conn_env(CONN_ID, host="https://kapture.example", login=LOGIN, password="kapture-pw", extra=extra)
        hook = KaptureHook(CONN_ID)
        try:
            with pytest.raises(KaptureConnectionError) as raised:
                hook.post_order(order_body("O1"), order_id="O1")
            tested, message = hook.test_connection()
        finally:
            hook.close()
    assert proxy.requests[0].request_line.startswith("CONNECT kapture.example:443 ")
    assert proxy.requests[0].headers["proxy-authorization"] == f"Basic {proxy_token}"  # what it quoted back
    assert raised.value.cause == Cause.PROXY and not tested
    texts = {"exception": f"{raised.value} {raised.value!r} {raised.value.message}", "test_connection": message}
    assert not leaked_secrets(texts, {"the proxy token": proxy_token, "the proxy password": proxy_password})


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_host_with_credentials_is_refused_naming_login_and_password(
    scheme: str, kapture_conn_env: Callable[..., str]
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    with HostileServer(kapture(raw(http_answer()))) as server:
        kapture_conn_env(CONN_ID, host=f"{scheme}://{LOGIN}:{password}@127.0.0.1:{server.port}", password=password)
        hook = KaptureHook(CONN_ID)
        with pytest.raises(AirflowFailException) as raised:
            hook.check_settings()
        tested, message = hook.test_connection()
    assert not server.requests  # nothing was sent
    assert not tested
    for text in (str(raised.value), message):
        assert "Login" in text and "Password" in text, text
        assert password not in text
