"""The emulator's protections, over real HTTP on loopback: Host checks, body framing, and who may use
``/_emulator/`` and what it shows."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
import requests

from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.testing.emulator.control import is_loopback, refusal

pytestmark = pytest.mark.unit

AUTH = ("kapture-user", "kapture-password")
TOKEN = base64.b64encode(b"kapture-user:kapture-password").decode()
NAME, PHONE, EMAIL = "Asha Verma", "9380491257", "asha.verma@example.in"
ORDER = {
    "customer_info": {"customer_name": NAME, "phone": PHONE, "email_id": EMAIL},
    "contact_info": [{"contact_person_phone": PHONE, "contact_person_email": EMAIL}],
    "order_info": {"order_id": "P-1", "remarks": "fragile"},
}
PERSONAL = (NAME, PHONE, EMAIL)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A session that ignores the machine's proxy settings: every request goes straight to the emulator."""
    with requests.Session() as running:
        running.trust_env = False
        yield running


def exchange(port: int, request: bytes, address: str = "127.0.0.1") -> bytes:
    """Send raw bytes on a fresh connection and read until the server closes it or 2 s pass."""
    with socket.create_connection((address, port), timeout=2) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    return data


def post_head(host: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {ADD_UPDATE_PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


# -- the Host header -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]"])
def test_the_emulator_s_own_names_with_its_port_are_accepted(
    kapture_emulator: KaptureEmulator, session: requests.Session, name: str
) -> None:
    host = f"{name}:{kapture_emulator.port}"

    answer = session.post(kapture_emulator.url + ADD_UPDATE_PATH, json=ORDER, auth=AUTH, headers={"Host": host})

    assert answer.json()["status"] == "success"
    assert kapture_emulator.update_counts == {"P-1": 1}


@pytest.mark.parametrize(
    ("host_lines", "status"),
    [
        ("Host: attacker.example:{port}\r\n", 421),  # DNS rebinding: a foreign name resolving to 127.0.0.1
        ("Host: 127.0.0.1:{other}\r\n", 421),
        ("Host: 127.0.0.1\r\n", 421),
        ("", 400),
        ("Host: 127.0.0.1:{port}\r\nHost: attacker.example\r\n", 400),
    ],
    ids=["foreign-name", "other-port", "no-port", "missing", "twice"],
)
@pytest.mark.parametrize("path", [ADD_UPDATE_PATH, "/_emulator/config"])
def test_a_request_for_another_host_is_refused_unrecorded(
    kapture_emulator: KaptureEmulator, host_lines: str, status: int, path: str
) -> None:
    port = kapture_emulator.port
    body = json.dumps(ORDER).encode()
    head = (
        f"POST {path} HTTP/1.1\r\n{host_lines.format(port=port, other=port + 1)}Authorization: Basic {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    answer = exchange(port, head + body)

    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in answer
    assert (kapture_emulator.requests, kapture_emulator.orders) == ([], {})


def test_an_ipv6_loopback_bind_serves_its_bracketed_name(session: requests.Session) -> None:
    emulator = KaptureEmulator(host="::1")
    try:
        emulator.start()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    try:
        assert emulator.url == f"http://[::1]:{emulator.port}"
        assert session.post(emulator.url + ADD_UPDATE_PATH, json=ORDER, auth=AUTH).json()["status"] == "success"
        assert session.get(emulator.url + "/_emulator/stats").json()["stored"] == 1
    finally:
        emulator.stop()


# -- the body's framing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "status"),
    [
        (["²"], 400),  # a digit to str.isdigit(), not to HTTP
        (["+5"], 400),
        (["5", "6"], 400),
        ([str(10**15)], 413),
    ],
    ids=["superscript", "signed", "two-lengths", "huge"],
)
def test_a_body_without_one_plain_length_is_refused_unread(
    kapture_emulator: KaptureEmulator, lengths: list[str], status: int
) -> None:
    port = kapture_emulator.port
    head = (
        f"POST {ADD_UPDATE_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {TOKEN}\r\n"
        + "".join(f"Content-Length: {length}\r\n" for length in lengths)
        + "\r\n"
    ).encode("utf-8")

    answer = exchange(port, head + b'{"a":1}')

    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in answer
    assert kapture_emulator.requests == []


def test_repeated_equal_lengths_are_one_length(kapture_emulator: KaptureEmulator) -> None:
    body = json.dumps(ORDER).encode()
    extra = f"Content-Length: {len(body)}\r\nConnection: close\r\n"

    answer = exchange(kapture_emulator.port, post_head(f"127.0.0.1:{kapture_emulator.port}", len(body), extra) + body)

    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert kapture_emulator.update_counts == {"P-1": 1}


# -- who may use /_emulator/ -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.45.6.7", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.7", False),
        ("10.0.0.1", False),
        ("::ffff:192.0.2.7", False),
        ("fe80::1", False),
        ("not-an-address", False),
    ],
)
def test_loopback_is_127_0_0_0_8_and_colon_colon_1(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
    refused = refusal("GET", Message(), address, frozenset())
    assert (refused is None) is loopback
    if refused is not None:
        assert refused.status == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},  # what a cross-site <form enctype="text/plain"> or fetch() may send
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {},
    ],
    ids=["text-plain", "form", "multipart", "no-content-type"],
)
def test_a_change_that_is_not_json_is_refused_and_changes_nothing(
    kapture_emulator: KaptureEmulator, session: requests.Session, headers: dict[str, str]
) -> None:
    kapture_emulator.script("500")
    before = kapture_emulator.config

    for name, body in [("config", {"password": "taken-over"}), ("reset", {}), ("script", {"faults": ["reset"]})]:
        refused = session.post(f"{kapture_emulator.url}/_emulator/{name}", data=json.dumps(body), headers=headers)
        assert (refused.status_code, refused.json()["status"]) == (415, "failed")

    assert kapture_emulator.config == before
    assert session.post(kapture_emulator.url + ADD_UPDATE_PATH, json=ORDER, auth=AUTH).status_code == 500
    assert session.post(kapture_emulator.url + ADD_UPDATE_PATH, json=ORDER, auth=AUTH).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},
        {"Origin": "https://127.0.0.1:{port}"},  # another scheme is another origin
        {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_cross_site_request_is_refused(
    kapture_emulator: KaptureEmulator, session: requests.Session, headers: dict[str, str]
) -> None:
    sent = {name: value.format(port=kapture_emulator.port) for name, value in headers.items()}

    changed = session.post(f"{kapture_emulator.url}/_emulator/config", json={"password": "taken-over"}, headers=sent)
    read = session.get(f"{kapture_emulator.url}/_emulator/stats", headers=sent)

    assert changed.status_code == read.status_code == 403
    assert kapture_emulator.config["password"] == "kapture-password"


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Origin": "http://127.0.0.1:{port}"},
        {"Origin": "http://localhost:{port}"},
    ],
)
def test_a_same_origin_change_is_served(
    kapture_emulator: KaptureEmulator, session: requests.Session, headers: dict[str, str]
) -> None:
    sent = {name: value.format(port=kapture_emulator.port) for name, value in headers.items()}

    changed = session.post(f"{kapture_emulator.url}/_emulator/config", json={"latency": 0.001}, headers=sent)

    assert changed.status_code == 200
    assert kapture_emulator.config["latency"] == 0.001


# -- what /_emulator/ shows -----------------------------------------------------------------------------


def post_orders(emulator: KaptureEmulator, session: requests.Session) -> None:
    url = emulator.url + ADD_UPDATE_PATH
    assert session.post(url, json=ORDER, auth=AUTH).json()["status"] == "success"
    refused = session.post(url, json=ORDER, auth=("kapture-user", "guessed-password")).json()
    assert refused["status"] == "failed"
    assert session.post(url, json=ORDER).json()["status"] == "failed"


def test_recorded_requests_over_http_show_no_credentials_and_no_personal_values(
    kapture_emulator: KaptureEmulator, session: requests.Session
) -> None:
    post_orders(kapture_emulator, session)
    guessed = base64.b64encode(b"kapture-user:guessed-password").decode()

    served = session.get(f"{kapture_emulator.url}/_emulator/requests", auth=AUTH)  # even to Kapture's user

    for secret in (TOKEN, guessed, "kapture-password", "guessed-password", *PERSONAL):
        assert secret not in served.text
    records = served.json()
    assert [r["authorization"] for r in records] == ["accepted", "refused", None]
    assert [(r["order_id"], r["status"], r["stored"]) for r in records] == [
        ("P-1", 200, True),
        ("P-1", 200, False),
        ("P-1", 200, False),
    ]
    assert records[0]["body"]["customer_info"] == {"customer_name": "***", "phone": "***", "email_id": "***"}
    # in the test's own process, everything stays inspectable
    first = kapture_emulator.requests[0]
    assert (first.authorization, first.body) == (f"Basic {TOKEN}", ORDER)


def test_the_config_over_http_shows_no_password_or_token(
    kapture_emulator: KaptureEmulator, session: requests.Session
) -> None:
    kapture_emulator.configure(token="s3cr3t-auth-key")

    read = session.get(f"{kapture_emulator.url}/_emulator/config")
    changed = session.post(f"{kapture_emulator.url}/_emulator/config", json={"latency": 0})

    for served in (read, changed):
        assert served.status_code == 200
        assert "kapture-password" not in served.text and "s3cr3t-auth-key" not in served.text
        assert (served.json()["password"], served.json()["token"]) == ("***", "***")
        assert served.json()["username"] == "kapture-user"
    assert kapture_emulator.config["password"] == "kapture-password"


@pytest.mark.parametrize(
    ("auth", "whole"),
    [(AUTH, True), (("kapture-user", "guessed-password"), False), (None, False)],
    ids=["kapture-credentials", "wrong-password", "none"],
)
def test_stored_orders_show_their_values_only_with_kapture_s_credentials(
    kapture_emulator: KaptureEmulator, session: requests.Session, auth: Any, whole: bool
) -> None:
    post_orders(kapture_emulator, session)

    every = session.get(f"{kapture_emulator.url}/_emulator/orders", auth=auth)
    one = session.get(f"{kapture_emulator.url}/_emulator/orders/P-1", auth=auth)

    assert list(every.json()) == ["P-1"]  # the order ids are no secret
    assert one.json()["updates"] == 1
    if whole:
        assert every.json() == kapture_emulator.orders
        assert one.json() == kapture_emulator.stored_order("P-1")
    else:
        for served in (every, one):
            assert not any(value in served.text for value in PERSONAL)
        assert one.json()["body"]["order_info"] == {"order_id": "***", "remarks": "***"}
