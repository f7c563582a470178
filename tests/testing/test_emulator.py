"""Tests of the Kapture API emulator, over real HTTP on loopback."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from kapture_provider.testing import Fault, KaptureEmulator, RecordedRequest
from kapture_provider.testing.cli import main as cli_main

pytestmark = pytest.mark.unit

ADD_UPDATE = "/ms/customer/order/api/v1/add-update"
SEARCH = "/ms/customer-search/order-search/api/v1/pull-internal"
AUTH = ("kapture-user", "kapture-password")
BASIC = "Basic " + base64.b64encode(b"kapture-user:kapture-password").decode()
SUCCESS_KEYS = ["status", "message", "Order"]
ORDER_KEYS = ["result", "customer_id", "enquiry_id", "action", "action_event", "contact_id"]


def order_body(
    order_id: Any = "23518265",
    name: str = "ABC",
    phone: str = "9380491257",
    email: str = "abc@abc.min",
    contact_phone: str = "9380491257",
    remarks: str = "testing 2345",
) -> dict[str, Any]:
    """A trimmed version of the request body on Kapture's reference page."""
    return {
        "customer_info": {"customer_name": name, "phone": phone, "email_id": email, "update": False},
        "contact_info": [{"contact_person_phone": contact_phone, "gender": "Male", "update": False}],
        "enquiry_info": {"remarks": "testing", "update": False},
        "order_info": {"order_id": order_id, "remarks": remarks, "invoice_no": "3141341", "update": True},
    }


def post_order(
    emulator: KaptureEmulator,
    body: Any = None,
    *,
    auth: Any = AUTH,
    session: requests.Session | None = None,
    **kwargs: Any,
) -> requests.Response:
    sender = session or requests
    payload = order_body() if body is None else body
    kwargs.setdefault("timeout", 5)
    return sender.post(emulator.url + ADD_UPDATE, json=payload, auth=auth, **kwargs)


def control(emulator: KaptureEmulator, method: str, name: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{emulator.url}/_emulator/{name}", timeout=5, **kwargs)


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send one request on a fresh socket and return the first recv() of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def raw_post(port: int, path: str, body: bytes, authorization: str = BASIC) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# -- the Update Order endpoint ---------------------------------------------------------------------


def test_success_answer_has_the_documented_shape_and_stores_the_body(
    kapture_emulator: KaptureEmulator,
) -> None:
    body = order_body()
    response = post_order(kapture_emulator, body)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    payload = response.json()
    assert list(payload) == SUCCESS_KEYS
    assert payload["status"] == "success"
    assert payload["message"] == "Order Updated successfully !"
    assert list(payload["Order"]) == ORDER_KEYS
    assert payload["Order"] == {
        "result": True,
        "customer_id": 191696570,
        "enquiry_id": 24284719,
        "action": "ORDER",
        "action_event": "ORDER_FIELD_UPDATION",
        "contact_id": 210006001,
    }
    assert kapture_emulator.orders == {"23518265": body}
    assert kapture_emulator.update_counts == {"23518265": 1}
    [record] = kapture_emulator.requests
    assert isinstance(record, RecordedRequest)
    assert (record.seq, record.method, record.path) == (1, "POST", ADD_UPDATE)
    assert (record.order_id, record.status, record.fault, record.stored) == ("23518265", 200, None, True)
    assert record.authorization == BASIC
    assert record.body == body


def test_upsert_keeps_the_latest_body_and_the_same_ids(kapture_emulator: KaptureEmulator) -> None:
    first = post_order(kapture_emulator, order_body(remarks="first")).json()["Order"]
    second = post_order(kapture_emulator, order_body(remarks="second")).json()["Order"]

    assert second == first
    assert kapture_emulator.orders["23518265"]["order_info"]["remarks"] == "second"
    assert kapture_emulator.update_counts == {"23518265": 2}
    assert kapture_emulator.stats()["stored"] == 2
    assert kapture_emulator.stats()["orders"] == 1


def test_an_update_changes_only_the_fields_it_carries(kapture_emulator: KaptureEmulator) -> None:
    post_order(kapture_emulator, order_body(remarks="first"))
    partial = {
        "customer_info": {"customer_name": "ABC", "city": "Pune"},
        "order_info": {"order_id": "23518265", "delivery_status": "Delivered", "update": True},
    }
    post_order(kapture_emulator, partial)

    stored = kapture_emulator.orders["23518265"]
    assert stored["order_info"]["remarks"] == "first"  # kept
    assert stored["order_info"]["delivery_status"] == "Delivered"  # changed
    assert stored["customer_info"]["email_id"] == "abc@abc.min"  # kept
    assert stored["customer_info"]["city"] == "Pune"
    assert stored["contact_info"] == order_body()["contact_info"]


def test_ids_follow_customers_contacts_and_orders(kapture_emulator: KaptureEmulator) -> None:
    def ids(**fields: Any) -> dict[str, int]:
        return post_order(kapture_emulator, order_body(**fields)).json()["Order"]

    base = ids(order_id="A1")
    other_order = ids(order_id="A2")
    assert other_order["customer_id"] == base["customer_id"]
    assert other_order["contact_id"] == base["contact_id"]
    assert other_order["enquiry_id"] == base["enquiry_id"] + 1

    same_customer_by_email = ids(order_id="A3", phone="")
    assert same_customer_by_email["customer_id"] == base["customer_id"]

    new_contact = ids(order_id="A4", contact_phone="9000000000")
    assert new_contact["customer_id"] == base["customer_id"]
    assert new_contact["contact_id"] == base["contact_id"] + 1

    other_customer = ids(order_id="B1", name="XYZ", phone="9111111111", email="x@y.z")
    assert other_customer["customer_id"] == base["customer_id"] + 1
    assert other_customer["contact_id"] not in (base["contact_id"], new_contact["contact_id"])

    assert ids(order_id="A1")["enquiry_id"] == base["enquiry_id"]


def test_numeric_and_string_order_ids_are_the_same_order(kapture_emulator: KaptureEmulator) -> None:
    as_string = post_order(kapture_emulator, order_body(order_id="777")).json()["Order"]
    as_number = post_order(kapture_emulator, order_body(order_id=777)).json()["Order"]

    assert as_number == as_string
    assert kapture_emulator.orders["777"]["order_info"]["order_id"] == 777
    assert kapture_emulator.update_counts == {"777": 2}


@pytest.mark.parametrize(
    ("failure_mode", "expected_status"),
    [("body", 200), ("http", 401)],
)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic " + base64.b64encode(b"kapture-user:wrong").decode(),
        "Bearer " + base64.b64encode(b"kapture-user:kapture-password").decode(),
        "Basic",
    ],
    ids=["missing", "wrong-password", "wrong-scheme", "empty-token"],
)
def test_bad_credentials_are_refused(
    kapture_emulator: KaptureEmulator, failure_mode: str, expected_status: int, authorization: str | None
) -> None:
    kapture_emulator.configure(failure_mode=failure_mode)
    headers = {} if authorization is None else {"Authorization": authorization}

    response = post_order(kapture_emulator, auth=None, headers=headers)

    assert response.status_code == expected_status
    assert response.json() == {"message": "Invalid Auth Key", "status": "failed"}
    assert kapture_emulator.orders == {}
    [record] = kapture_emulator.requests
    assert (record.status, record.stored, record.authorization) == (expected_status, False, authorization)


def test_token_is_accepted_verbatim_beside_user_and_password(kapture_emulator: KaptureEmulator) -> None:
    kapture_emulator.configure(token="s3cr3t-auth-key")

    by_token = post_order(
        kapture_emulator, order_body("T1"), auth=None, headers={"Authorization": "Basic s3cr3t-auth-key"}
    )
    by_password = post_order(kapture_emulator, order_body("T2"))
    by_other_token = post_order(kapture_emulator, order_body("T3"), auth=None, headers={"Authorization": "Basic nope"})

    assert by_token.json()["status"] == "success"
    assert by_password.json()["status"] == "success"
    assert by_other_token.json() == {"message": "Invalid Auth Key", "status": "failed"}
    assert sorted(kapture_emulator.orders) == ["T1", "T2"]


def test_credentials_can_change_at_run_time(kapture_emulator: KaptureEmulator) -> None:
    kapture_emulator.configure(username="alice", password="wonderland")

    assert post_order(kapture_emulator).json()["status"] == "failed"
    assert post_order(kapture_emulator, auth=("alice", "wonderland")).json()["status"] == "success"


@pytest.mark.parametrize(
    ("raw_body", "message"),
    [
        (b"not json", "Invalid request body"),
        (b"[1, 2]", "Invalid request body"),
        (json.dumps({"customer_info": {"customer_name": "ABC"}}).encode(), "order_info.order_id is mandatory"),
        (json.dumps(order_body(order_id="  ")).encode(), "order_info.order_id is mandatory"),
        (json.dumps(order_body(order_id=True)).encode(), "order_info.order_id is mandatory"),
        (json.dumps(order_body(order_id=None)).encode(), "order_info.order_id is mandatory"),
        (json.dumps(order_body(name="")).encode(), "customer_info.customer_name is mandatory"),
        (json.dumps({"order_info": {"order_id": "1"}}).encode(), "customer_info.customer_name is mandatory"),
    ],
    ids=["not-json", "array", "no-order-info", "blank-id", "bool-id", "null-id", "empty-name", "no-customer"],
)
@pytest.mark.parametrize(("failure_mode", "expected_status"), [("body", 200), ("http", 400)])
def test_invalid_bodies_are_refused(
    kapture_emulator: KaptureEmulator, raw_body: bytes, message: str, failure_mode: str, expected_status: int
) -> None:
    kapture_emulator.configure(failure_mode=failure_mode)

    response = requests.post(
        kapture_emulator.url + ADD_UPDATE,
        data=raw_body,
        auth=AUTH,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )

    assert response.status_code == expected_status
    assert response.json() == {"message": message, "status": "failed"}
    assert kapture_emulator.orders == {}
    [record] = kapture_emulator.requests
    assert record.status == expected_status
    assert record.body == (raw_body.decode() if raw_body == b"not json" else json.loads(raw_body))


def test_auth_is_checked_before_the_body(kapture_emulator: KaptureEmulator) -> None:
    response = requests.post(kapture_emulator.url + ADD_UPDATE, data=b"{}", timeout=5)

    assert response.json()["message"] == "Invalid Auth Key"


def test_record_bodies_off_keeps_requests_without_bodies(kapture_emulator: KaptureEmulator) -> None:
    kapture_emulator.configure(record_bodies=False)

    post_order(kapture_emulator)

    [record] = kapture_emulator.requests
    assert (record.order_id, record.status, record.body) == ("23518265", 200, None)
    assert kapture_emulator.orders["23518265"] == order_body()


# -- faults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "retry_after", "message"),
    [
        (Fault.HTTP_500, 500, "application/json", None, "Internal Server Error"),
        (Fault.HTTP_502, 502, "text/html", None, None),
        (Fault.HTTP_503, 503, "application/json", "3", "Service Unavailable"),
        (Fault.HTTP_429, 429, "application/json", "3", "Too Many Requests"),
        (Fault.HTTP_429_BARE, 429, "application/json", None, "Too Many Requests"),
        (Fault.FAILED_BODY, 200, "application/json", None, "Order Updation Failed"),
        (Fault.NON_JSON, 200, "text/html", None, None),
        (Fault.HTTP_401, 401, "application/json", None, "Invalid Auth Key"),
        (Fault.HTTP_403, 403, "application/json", None, "Access Denied"),
        (Fault.HTTP_404, 404, "application/json", None, "Not Found"),
    ],
)
def test_fault_answers(
    kapture_emulator: KaptureEmulator,
    fault: Fault,
    status: int,
    content_type: str,
    retry_after: str | None,
    message: str | None,
) -> None:
    kapture_emulator.configure(retry_after=3)
    kapture_emulator.script(fault)

    response = post_order(kapture_emulator)

    assert response.status_code == status
    assert response.headers["Content-Type"] == content_type
    assert response.headers.get("Retry-After") == retry_after
    if message is None:
        assert response.text.lstrip().lower().startswith(("<html", "<!doctype html"))
        with pytest.raises(ValueError):
            response.json()
    else:
        assert response.json() == {"message": message, "status": "failed"}
    assert kapture_emulator.orders == {}
    [record] = kapture_emulator.requests
    assert (record.status, record.fault, record.stored) == (status, str(fault), False)
    assert kapture_emulator.stats()["by_fault"] == {str(fault): 1}


def test_truncated_fault_cuts_the_json_but_keeps_content_length_honest(
    kapture_emulator: KaptureEmulator,
) -> None:
    kapture_emulator.script("truncated")

    response = post_order(kapture_emulator)

    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.text.startswith('{"status":"success"')
    with pytest.raises(ValueError):
        json.loads(response.content)
    assert kapture_emulator.orders == {}


def test_reset_fault_aborts_the_connection_with_rst(kapture_emulator: KaptureEmulator) -> None:
    kapture_emulator.script(Fault.RESET, Fault.RESET)
    body = json.dumps(order_body()).encode()

    with pytest.raises(ConnectionResetError):
        raw_exchange(kapture_emulator.port, raw_post(kapture_emulator.port, ADD_UPDATE, body))
    with pytest.raises(requests.ConnectionError):
        post_order(kapture_emulator)
    after = post_order(kapture_emulator)

    assert after.json()["status"] == "success"
    assert [(r.status, r.fault, r.stored) for r in kapture_emulator.requests] == [
        (0, "reset", False),
        (0, "reset", False),
        (200, None, True),
    ]
    assert kapture_emulator.stats()["by_status"] == {"0": 2, "200": 1}


def test_slow_fault_stores_the_order_but_answers_after_the_client_gave_up(
    kapture_emulator: KaptureEmulator,
) -> None:
    kapture_emulator.configure(slow_seconds=1.0)
    kapture_emulator.script("slow")

    with pytest.raises(requests.ReadTimeout):
        post_order(kapture_emulator, timeout=0.2)

    assert kapture_emulator.orders == {"23518265": order_body()}
    [record] = kapture_emulator.requests
    assert (record.status, record.fault, record.stored) == (200, "slow", True)


def test_latency_delays_every_answer(kapture_emulator: KaptureEmulator) -> None:
    kapture_emulator.configure(latency=1.0)

    with pytest.raises(requests.ReadTimeout):
        post_order(kapture_emulator, timeout=0.2)

    assert kapture_emulator.update_counts == {"23518265": 1}


def test_scripted_faults_come_in_order_then_normal_answers(kapture_emulator: KaptureEmulator) -> None:
    kapture_emulator.script("500", Fault.HTTP_503)
    kapture_emulator.script("failed-body")

    statuses = [post_order(kapture_emulator).status_code for _ in range(4)]

    assert statuses == [500, 503, 200, 200]
    assert [r.fault for r in kapture_emulator.requests] == ["500", "503", "failed-body", None]
    assert kapture_emulator.update_counts == {"23518265": 1}


def test_scripted_faults_for_an_order_hit_only_that_order_and_come_first(
    kapture_emulator: KaptureEmulator,
) -> None:
    kapture_emulator.script("503")
    kapture_emulator.script_for_order(42, "404", "500")

    other = post_order(kapture_emulator, order_body(order_id="41"))
    targeted = [post_order(kapture_emulator, order_body(order_id="42")).status_code for _ in range(3)]

    assert other.status_code == 503
    assert targeted == [404, 500, 200]
    assert kapture_emulator.update_counts == {"42": 1}


def test_scripted_faults_take_precedence_over_random_ones(kapture_emulator: KaptureEmulator) -> None:
    kapture_emulator.configure(fault_rate=1.0, fault_kinds=["403"])
    kapture_emulator.script("502")

    statuses = [post_order(kapture_emulator).status_code for _ in range(3)]

    assert statuses == [502, 403, 403]
    assert kapture_emulator.orders == {}


def test_unknown_faults_are_refused(kapture_emulator: KaptureEmulator) -> None:
    with pytest.raises(ValueError):
        kapture_emulator.script("teapot")
    with pytest.raises(ValueError):
        KaptureEmulator(fault_kinds=["teapot"])


def test_same_seed_gives_the_same_random_faults() -> None:
    settings: dict[str, Any] = {"fault_rate": 0.5, "fault_kinds": ["500", "503", "429-bare"], "seed": 1234}

    def statuses(emulator: KaptureEmulator) -> list[int]:
        with requests.Session() as session:
            return [post_order(emulator, session=session).status_code for _ in range(40)]

    with KaptureEmulator(**settings) as first, KaptureEmulator(**settings) as second:
        sequence = statuses(first)
        assert statuses(second) == sequence
        first.reset()
        assert statuses(first) == sequence
        first.configure(seed=99)
        assert statuses(first) != sequence

    assert {200, 500, 503, 429} <= set(sequence)


def test_rate_limit_answers_429_with_retry_after_beyond_the_window(kapture_emulator: KaptureEmulator) -> None:
    kapture_emulator.configure(rate_limit=3, retry_after=2)

    with requests.Session() as session:
        responses = [post_order(kapture_emulator, order_body(order_id=n), session=session) for n in range(5)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
        assert [r.headers.get("Retry-After") for r in responses[3:]] == ["2", "2"]
        assert responses[4].json()["status"] == "failed"
        assert sorted(kapture_emulator.orders) == ["0", "1", "2"]
        stats = kapture_emulator.stats()
        assert (stats["rate_limited"], stats["stored"], stats["by_status"]) == (2, 3, {"200": 3, "429": 2})

        threading.Event().wait(1.1)  # let the one-second window slide past the admitted requests
        assert post_order(kapture_emulator, order_body(order_id=5), session=session).status_code == 200


# -- the order search endpoint ---------------------------------------------------------------------


def test_search_returns_stored_orders_and_changes_nothing(kapture_emulator: KaptureEmulator) -> None:
    for order_id in ("1", "2", "3"):
        post_order(kapture_emulator, order_body(order_id=order_id))
    before = kapture_emulator.orders

    def search(payload: Any, auth: Any = AUTH) -> requests.Response:
        return requests.post(kapture_emulator.url + SEARCH, json=payload, auth=auth, timeout=5)

    by_list = search({"cmId": 5, "orderIds": ["3", "1", "404"]}).json()
    by_string = search({"cmId": 5, "orderIds": "2, 3"}).json()
    everything = search({"cmId": 5}).json()

    assert by_list["status"] == "success"
    assert [o["order_info"]["order_id"] for o in by_list["orders"]] == ["3", "1"]
    assert [o["order_info"]["order_id"] for o in by_string["orders"]] == ["2", "3"]
    assert len(everything["orders"]) == 3
    assert everything["orders"][0] == order_body(order_id="1")
    assert search({"orderIds": ["1"]}).json() == {"message": "cmId is required", "status": "failed"}
    assert search({"cmId": 0}).json()["message"] == "cmId is required"
    assert search({"cmId": 5}, auth=("kapture-user", "x")).json()["message"] == "Invalid Auth Key"
    kapture_emulator.configure(failure_mode="http")
    assert search({"cmId": "5"}).status_code == 400
    assert kapture_emulator.orders == before
    assert kapture_emulator.update_counts == {"1": 1, "2": 1, "3": 1}
    assert [r.status for r in kapture_emulator.requests if r.path == SEARCH] == [200, 200, 200, 200, 200, 200, 400]


def test_faults_apply_to_add_update_only(kapture_emulator: KaptureEmulator) -> None:
    kapture_emulator.configure(fault_rate=1.0, fault_kinds=["500"])

    response = requests.post(kapture_emulator.url + SEARCH, json={"cmId": 1}, auth=AUTH, timeout=5)

    assert response.status_code == 200
    assert response.json()["orders"] == []


def test_unknown_paths_and_methods(kapture_emulator: KaptureEmulator) -> None:
    missing = requests.post(kapture_emulator.url + "/ms/customer/order/api/v2/nope", json={}, auth=AUTH, timeout=5)
    wrong_method = requests.get(kapture_emulator.url + ADD_UPDATE, auth=AUTH, timeout=5)

    assert missing.status_code == 404
    assert missing.json() == {"message": "Not Found", "status": "failed"}
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert [(r.method, r.status) for r in kapture_emulator.requests] == [("POST", 404), ("GET", 405)]


# -- HTTP inspection and control -------------------------------------------------------------------


def test_inspection_endpoints(kapture_emulator: KaptureEmulator) -> None:
    post_order(kapture_emulator, order_body(order_id="A/1"))
    post_order(kapture_emulator, order_body(order_id="A/1", remarks="again"))
    post_order(kapture_emulator, order_body(order_id="B"), auth=None)

    assert control(kapture_emulator, "GET", "health").json() == {"status": "ok"}
    stats = control(kapture_emulator, "GET", "stats").json()
    assert stats == kapture_emulator.stats()
    assert (stats["requests"], stats["stored"], stats["orders"], stats["by_status"]) == (3, 2, 1, {"200": 3})

    every = control(kapture_emulator, "GET", "requests").json()
    assert [r["seq"] for r in every] == [1, 2, 3]
    assert [(r["order_id"], r["status"], r["stored"]) for r in every] == [
        ("A/1", 200, True),
        ("A/1", 200, True),
        ("B", 200, False),
    ]
    assert [r["seq"] for r in control(kapture_emulator, "GET", "requests", params={"since": 2}).json()] == [3]

    assert control(kapture_emulator, "GET", "orders", auth=AUTH).json() == kapture_emulator.orders
    record = control(kapture_emulator, "GET", "orders/A%2F1", auth=AUTH).json()
    assert record == kapture_emulator.stored_order("A/1")
    assert (record["order_id"], record["updates"], record["body"]["order_info"]["remarks"]) == ("A/1", 2, "again")
    assert (record["customer_id"], record["enquiry_id"], record["contact_id"]) == (191696570, 24284719, 210006001)
    unknown = control(kapture_emulator, "GET", "orders/B")
    assert (unknown.status_code, unknown.json()["status"]) == (404, "failed")
    assert control(kapture_emulator, "GET", "nothing-here").status_code == 404
    assert control(kapture_emulator, "GET", "requests", params={"since": "x"}).status_code == 400

    assert len(kapture_emulator.requests) == 3  # inspection calls are not recorded


def test_control_endpoints_reset_script_and_configure(kapture_emulator: KaptureEmulator) -> None:
    post_order(kapture_emulator)
    assert control(kapture_emulator, "POST", "reset", json={}).json() == {"status": "success"}
    assert (kapture_emulator.orders, kapture_emulator.requests) == ({}, [])

    queued = control(kapture_emulator, "POST", "script", json={"faults": ["500", "reset"]})
    assert queued.json() == {"status": "success", "queued": 2}
    control(kapture_emulator, "POST", "script", json={"faults": ["403"], "order_id": "9"})
    assert post_order(kapture_emulator, order_body(order_id="9")).status_code == 403
    assert post_order(kapture_emulator).status_code == 500
    assert control(kapture_emulator, "POST", "script", json={"faults": ["bogus"]}).status_code == 400
    assert control(kapture_emulator, "POST", "script", json={"order_id": "9"}).status_code == 400

    changed = control(kapture_emulator, "POST", "config", json={"failure_mode": "http", "fault_kinds": ["502"]})
    assert changed.status_code == 200
    assert changed.json()["failure_mode"] == "http"
    assert changed.json()["fault_kinds"] == ["502"]
    assert {**kapture_emulator.config, "password": "***"} == control(kapture_emulator, "GET", "config").json()
    with pytest.raises(requests.ConnectionError):  # the scripted reset is still queued
        post_order(kapture_emulator, auth=None)
    assert post_order(kapture_emulator, auth=None).status_code == 401

    for bad in ({"failure_mode": "maybe"}, {"fault_rate": 2}, {"no_such_setting": 1}, {"rate_limit": -1}):
        refused = control(kapture_emulator, "POST", "config", json=bad)
        assert (refused.status_code, refused.json()["status"]) == (400, "failed")
    as_json = {"Content-Type": "application/json"}
    assert control(kapture_emulator, "POST", "config", data=b"[]", headers=as_json).status_code == 400
    assert kapture_emulator.config["failure_mode"] == "http"


def test_configure_validates_settings(kapture_emulator: KaptureEmulator) -> None:
    with pytest.raises(ValueError):
        kapture_emulator.configure(failure_mode="loud")
    with pytest.raises(ValueError):
        kapture_emulator.configure(latency=-1)
    with pytest.raises(ValueError):
        kapture_emulator.configure(fault_rate=0.5, fault_kinds=[])
    with pytest.raises(TypeError):
        kapture_emulator.configure(port=1)
    assert kapture_emulator.config["failure_mode"] == "body"


# -- the HTTP/1.1 server ---------------------------------------------------------------------------


def test_each_answer_leaves_in_one_write_on_a_nodelay_keep_alive_socket(
    kapture_emulator: KaptureEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[bytes, int, Any]] = []

    def spying(write: Any) -> Any:
        def spying_write(sock: socket.socket, data: Any, *args: Any) -> Any:
            if sock.getsockname()[1] == kapture_emulator.port:  # the server's side of a connection
                nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                writes.append((bytes(data), nodelay, sock.getpeername()))
            return write(sock, data, *args)

        return spying_write

    for name in ("send", "sendall"):
        monkeypatch.setattr(socket.socket, name, spying(getattr(socket.socket, name)))
    with requests.Session() as session:
        answers = [post_order(kapture_emulator, order_body(order_id=n), session=session) for n in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len(writes) == 3
    assert len({peer for _, _, peer in writes}) == 1  # one keep-alive connection
    for data, nodelay, _ in writes:
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert f"Content-Length: {len(body)}".encode() in head
        assert json.loads(body)["status"] == "success"
        assert nodelay


def test_headers_and_body_arrive_together_and_the_connection_stays_open(
    kapture_emulator: KaptureEmulator,
) -> None:
    request = raw_post(kapture_emulator.port, ADD_UPDATE, json.dumps(order_body()).encode())
    with socket.create_connection(("127.0.0.1", kapture_emulator.port), timeout=5) as sock:
        answers = []
        for _ in range(2):
            sock.sendall(request)
            answers.append(sock.recv(65536))

    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"Connection: close" not in head
        assert json.loads(body)["Order"]["customer_id"] == 191696570
    assert kapture_emulator.update_counts == {"23518265": 2}


def test_connection_close_is_honoured(kapture_emulator: KaptureEmulator) -> None:
    request = raw_post(kapture_emulator.port, SEARCH, b'{"cmId": 1}').replace(b"Host:", b"Connection: close\r\nHost:")
    with socket.create_connection(("127.0.0.1", kapture_emulator.port), timeout=5) as sock:
        sock.sendall(request)
        data = read_until_closed(sock)

    assert b"Connection: close" in data.partition(b"\r\n\r\n")[0]
    assert json.loads(data.partition(b"\r\n\r\n")[2])["status"] == "success"


def test_clients_resetting_their_connection_leave_no_traceback(
    kapture_emulator: KaptureEmulator, capfd: pytest.CaptureFixture[str]
) -> None:
    sock = socket.create_connection(("127.0.0.1", kapture_emulator.port), timeout=5)
    sock.sendall(b"GET /_emulator/health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % kapture_emulator.port)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()

    for _ in range(500):  # until the server's connection threads have finished
        if not any("process_request_thread" in thread.name for thread in threading.enumerate()):
            break
        threading.Event().wait(0.01)

    assert control(kapture_emulator, "GET", "health").json() == {"status": "ok"}
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"POST\r\n\r\n", 400),
        (b"POST / HTTP/2.0\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nHost x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(101)) + b"\r\n", 431),
    ],
    ids=["short-request-line", "http-2", "header-without-colon", "too-many-headers"],
)
def test_malformed_requests_get_an_error_and_a_closed_connection(
    kapture_emulator: KaptureEmulator, request_head: bytes, status: int
) -> None:
    with socket.create_connection(("127.0.0.1", kapture_emulator.port), timeout=5) as sock:
        sock.sendall(request_head)
        answer = read_until_closed(sock)

    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in answer
    assert kapture_emulator.requests == []


def test_a_client_that_hangs_up_mid_body_is_neither_answered_nor_recorded(
    kapture_emulator: KaptureEmulator,
) -> None:
    """A worker killed between the header and body writes (urllib3 sends them apart): half a request."""
    request = raw_post(kapture_emulator.port, ADD_UPDATE, json.dumps(order_body()).encode())
    with socket.create_connection(("127.0.0.1", kapture_emulator.port), timeout=5) as sock:
        sock.sendall(request[:-20])
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_closed(sock)

    assert answer == b""
    assert kapture_emulator.requests == []
    assert kapture_emulator.orders == {}


def test_http_1_0_closes_and_expect_100_continue_is_honoured(kapture_emulator: KaptureEmulator) -> None:
    body = json.dumps(order_body()).encode()
    http_1_0 = raw_post(kapture_emulator.port, ADD_UPDATE, body).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with socket.create_connection(("127.0.0.1", kapture_emulator.port), timeout=5) as sock:
        sock.sendall(http_1_0)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in answer

    head, _, _ = raw_post(kapture_emulator.port, ADD_UPDATE, body).partition(b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", kapture_emulator.port), timeout=5) as sock:
        sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert json.loads(sock.recv(65536).partition(b"\r\n\r\n")[2])["status"] == "success"
    assert kapture_emulator.update_counts == {"23518265": 2}


def test_chunked_bodies_are_refused_and_the_connection_closed(kapture_emulator: KaptureEmulator) -> None:
    request = (
        f"POST {ADD_UPDATE} HTTP/1.1\r\nHost: 127.0.0.1:{kapture_emulator.port}\r\nAuthorization: {BASIC}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    ).encode()

    answer = raw_exchange(kapture_emulator.port, request)

    assert answer.startswith(b"HTTP/1.1 411 ")
    assert b"Connection: close" in answer
    assert kapture_emulator.orders == {}


def test_stop_closes_keep_alive_connections_and_wakes_sleeping_answers() -> None:
    emulator = KaptureEmulator(slow_seconds=120).start()
    outcome: list[BaseException] = []

    def slow_client() -> None:
        emulator.script_for_order("slow-1", "slow")
        try:
            post_order(emulator, order_body(order_id="slow-1"), timeout=120)
        except requests.ConnectionError as exc:
            outcome.append(exc)

    idle = socket.create_connection(("127.0.0.1", emulator.port), timeout=5)
    idle.sendall(raw_post(emulator.port, ADD_UPDATE, json.dumps(order_body()).encode()))
    assert idle.recv(65536).startswith(b"HTTP/1.1 200 OK")
    client = threading.Thread(target=slow_client)
    client.start()
    while emulator.stats()["requests"] < 2:
        threading.Event().wait(0.01)

    emulator.stop()
    client.join(timeout=30)

    assert not client.is_alive()
    assert len(outcome) == 1
    with idle:
        assert idle.recv(65536) == b""
    with pytest.raises(requests.ConnectionError):
        post_order(emulator)


def test_lifecycle_and_connection_values() -> None:
    emulator = KaptureEmulator(username="u@x", password="p:w/d")
    with pytest.raises(RuntimeError):
        _ = emulator.url
    with emulator:
        assert emulator.url == f"http://127.0.0.1:{emulator.port}"
        with pytest.raises(RuntimeError):
            emulator.start()
        connection = json.loads(emulator.connection_json(timeout=7))
        assert connection == {
            "conn_type": "kapture",
            "host": emulator.url,
            "login": "u@x",
            "password": "p:w/d",
            "extra": {"timeout": 7},
        }
        assert emulator.connection_uri() == (f"kapture://http://u%40x:p%3Aw%2Fd@127.0.0.1%3A{emulator.port}")
        assert post_order(emulator, auth=("u@x", "p:w/d")).json()["status"] == "success"
    with pytest.raises(requests.ConnectionError):
        post_order(emulator)


def test_connection_values_parse_in_airflow(kapture_conn: KaptureEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from kapture_provider.compat import BaseHook

    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_URI", kapture_conn.connection_uri(retries=3))
    from_env = BaseHook.get_connection("kapture_default")
    from_uri = BaseHook.get_connection("kapture_uri")

    for connection in (from_env, from_uri):
        assert connection.conn_type == "kapture"
        assert (connection.host, connection.login, connection.password) == (
            kapture_conn.url,
            "kapture-user",
            "kapture-password",
        )
    assert from_uri.extra_dejson == {"retries": 3}
    assert json.loads(os.environ["AIRFLOW_CONN_KAPTURE_DEFAULT"])["host"] == kapture_conn.url


# -- the kapture-emulator command ------------------------------------------------------------------


def start_cli(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "kapture_provider.testing.cli", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line.startswith("kapture-emulator listening on http://127.0.0.1:"), process.stderr
    return process, line.rsplit(" ", 1)[1]


def test_cli_serves_with_its_flags_until_sigterm(tmp_path: Path) -> None:
    ready_file = tmp_path / "ready"
    process, url = start_cli(
        "--failure-mode=http",
        "--token=cli-token",
        "--fault-rate=1",
        "--faults=503",
        "--retry-after=7",
        "--latency=0",
        "--rate-limit=100",
        "--seed=5",
        "--slow-seconds=2",
        "--no-record-bodies",
        f"--ready-file={ready_file}",
    )
    try:
        assert ready_file.read_text() == url
        faulted = requests.post(url + ADD_UPDATE, json=order_body(), auth=AUTH, timeout=5)
        assert (faulted.status_code, faulted.headers["Retry-After"]) == (503, "7")
        requests.post(url + "/_emulator/config", json={"fault_rate": 0}, timeout=5)
        by_token = requests.post(
            url + ADD_UPDATE, json=order_body(), headers={"Authorization": "Basic cli-token"}, timeout=5
        )
        assert by_token.json()["status"] == "success"
        refused = requests.post(url + ADD_UPDATE, json=order_body(), timeout=5)
        assert refused.status_code == 401
        config = requests.get(url + "/_emulator/config", timeout=5).json()
        assert (config["rate_limit"], config["seed"], config["slow_seconds"]) == (100, 5, 2)
        assert [r["body"] for r in requests.get(url + "/_emulator/requests", timeout=5).json()] == [None] * 3
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert process.stderr is not None
    assert process.stderr.read() == ""


def test_cli_stops_cleanly_on_sigint() -> None:
    process, url = start_cli()
    try:
        assert requests.get(url + "/_emulator/health", timeout=5).json() == {"status": "ok"}
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0


@pytest.mark.parametrize("argv", [["--faults", "500,teapot"], ["--failure-mode", "loud"], ["--fault-rate", "3"]])
def test_cli_refuses_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)

    assert exit_info.value.code == 2
    assert "kapture-emulator" in capsys.readouterr().err
