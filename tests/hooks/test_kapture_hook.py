"""KaptureHook over real HTTP against the Kapture emulator on loopback (no mocking of ``requests``)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kapture_provider.exceptions import (
    Cause,
    KaptureAuthError,
    KaptureError,
    KaptureRejectedError,
    KaptureResponseError,
    KaptureTransientError,
)
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, SEARCH_PATH, Fault, KaptureEmulator

pytestmark = pytest.mark.unit

# Copied verbatim from the "Body Request" tab of /work/shared/reference/kapture-update-order-api.md.
DOCUMENTED_BODY_JSON = """
{
    "customer_info": {
        "customer_name": "ABC",
        "phone": "9380491257",
        "email_id": "abc@abc.min",
        "locality": "",
        "city": "",
        "state": "",
        "country": "India",
        "address": "jalsa",
        "type": "",
        "classification": "",
        "pincode": "",
        "customer_code": "",
        "customer_id": "",
        "customer_assign_emp_name": "",
        "customer_assign_emp_code": "",
        "customer_assign_emp_email": "",
        "zone": "",
        "customer_remarks": "",
        "individual": false,
        "organization": true,
        "channel_partner": false,
        "remarks": "testing",
        "primary_source": "",
        "secondary_source": "",
        "tertiary_source": "",
        "additional_fields": {},
        "associate_fields": {},
        "update": false
    },
    "contact_info": [
        {
            "contact_id": "",
            "title": "no",
            "first_name": "",
            "last_name": "",
            "contact_person_name": "",
            "country_code": "",
            "contact_person_phone": "9380491257",
            "contact_person_email": "",
            "additional_contact_phone": "",
            "dob": "",
            "gender": "Male",
            "update": false,
            "matchEmailPhone": false
        }
    ],
    "enquiry_info": {
        "enquiry_id": "",
        "assign_emp_name": "",
        "assign_emp_code": "",
        "assign_emp_email": "",
        "round_robin_key": "",
        "next_follow_up_date": "",
        "action": "",
        "subStatus": "",
        "additional_fields": {},
        "associate_fields": {},
        "update": false,
        "remarks": "testing"
    },
    "order_info": {
        "order_id": "23518265",
        "assign_emp_name": "",
        "assign_emp_code": "",
        "assign_emp_email": "",
        "delivery_status": "",
        "erp_order_id": "",
        "erp_invoice_no": "",
        "create_date": "",
        "remarks": "testing 2345",
        "invoice_no": "3141341",
        "invoice_date": "",
        "unit_name": "",
        "block_name": "",
        "ticket_id": "",
        "encryptOrder": "",
        "payment_mode": "",
        "dealDetails": "",
        "associate_fields": {},
        "update": true
    }
}
"""
DOCUMENTED_BODY: dict[str, Any] = json.loads(DOCUMENTED_BODY_JSON)

# Copied verbatim from the "Response" tab of the same page.
DOCUMENTED_RESPONSE: dict[str, Any] = json.loads(
    """
{
    "status": "success",
    "message": "Order Updated successfully !",
    "Order": {
        "result": true,
        "customer_id": 191696570,
        "enquiry_id": 24284719,
        "action": "ORDER",
        "action_event": "ORDER_FIELD_UPDATION",
        "contact_id": 210006001
    }
}
"""
)

CONN_ID = "kapture_hook_test"
ORDER_ID = "A-1001"
CUSTOMER_NAME = "Zebulon Quixote"
PHONE = "9380491257"
EMAIL = "zebulon.quixote@example.com"
SAMPLE_ORDER: dict[str, Any] = {
    "customer_info": {"customer_name": CUSTOMER_NAME, "phone": PHONE, "email_id": EMAIL, "address": "7 Elm Row"},
    "contact_info": [{"contact_person_phone": PHONE, "contact_person_email": EMAIL}],
    "order_info": {"order_id": ORDER_ID, "invoice_no": "INV-77", "remarks": "handle with care"},
}
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "max_retries": 2}


def basic_token(login: str, password: str) -> str:
    return base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


@pytest.fixture
def make_hook(
    kapture_emulator: KaptureEmulator, kapture_conn_env: Callable[..., str]
) -> Iterator[Callable[..., KaptureHook]]:
    """Factory: a hook on ``AIRFLOW_CONN_KAPTURE_HOOK_TEST`` pointing at the emulator (fast backoff).

    Keyword arguments override the connection's fields (``host``, ``login``, ``password``) and extras.
    """
    hooks: list[KaptureHook] = []

    def make(
        *,
        host: str | None = None,
        login: str | None = None,
        password: str | None = None,
        **extra: Any,
    ) -> KaptureHook:
        config = kapture_emulator.config
        kapture_conn_env(
            CONN_ID,
            host=kapture_emulator.url if host is None else host,
            login=config["username"] if login is None else login,
            password=config["password"] if password is None else password,
            extra={**FAST, **extra},
        )
        hook = KaptureHook(kapture_conn_id=CONN_ID)
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


def add_update_requests(emulator: KaptureEmulator) -> list[Any]:
    return [r for r in emulator.requests if r.path == ADD_UPDATE_PATH]


def assert_error_text_is_safe(err: KaptureError, *secrets: str) -> None:
    """No credentials and no part of the order body in the error's text."""
    text = f"{err} | {err!r} | {err.message}"
    for secret in secrets:
        assert secret not in text
    for personal in (CUSTOMER_NAME, PHONE, EMAIL, "7 Elm Row", "handle with care"):
        assert personal not in text
    assert json.dumps(SAMPLE_ORDER) not in text
    assert json.dumps(SAMPLE_ORDER, separators=(",", ":")) not in text


def default_secrets(emulator: KaptureEmulator) -> tuple[str, str]:
    config = emulator.config
    return config["password"], basic_token(config["username"], config["password"])


# -- the documented example ----------------------------------------------------------------------------


def test_documented_body_arrives_exactly_as_documented(kapture_emulator: KaptureEmulator, make_hook) -> None:
    hook = make_hook()

    answer = hook.update_order(DOCUMENTED_BODY)

    (request,) = kapture_emulator.requests
    assert request.method == "POST"
    assert request.path == ADD_UPDATE_PATH
    assert request.body == DOCUMENTED_BODY
    assert request.stored
    assert answer == DOCUMENTED_RESPONSE
    assert kapture_emulator.orders == {"23518265": DOCUMENTED_BODY}


def test_connection_from_env_var_is_found_outside_a_task(kapture_emulator: KaptureEmulator, make_hook) -> None:
    hook = make_hook(timeout=7, max_retries=4)

    settings = hook.settings

    assert settings.base_url == kapture_emulator.url
    assert settings.timeout == 7.0
    assert settings.max_retries == 4
    assert settings.backoff_base == 0.01
    assert settings.backoff_max == 0.05
    assert hook.update_order(SAMPLE_ORDER)["status"] == "success"
    assert list(kapture_emulator.orders) == [ORDER_ID]


def test_unknown_connection_id_is_reported() -> None:
    from kapture_provider.compat import AirflowNotFoundException

    with pytest.raises(AirflowNotFoundException, match="kapture_no_such_conn"):
        _ = KaptureHook(kapture_conn_id="kapture_no_such_conn").settings


# -- Host forms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("https://acme.kapturecrm.com", "https://acme.kapturecrm.com"),
        ("https://acme.kapturecrm.com/", "https://acme.kapturecrm.com"),
        ("  https://acme.kapturecrm.com/  ", "https://acme.kapturecrm.com"),
        ("acme", "https://acme.kapturecrm.com"),
        ("acme.kapturecrm.com", "https://acme.kapturecrm.com"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("http://[::1]:8765", "http://[::1]:8765"),
    ],
)
def test_host_forms(make_hook, host: str, expected: str) -> None:
    assert make_hook(host=host).settings.base_url == expected


def test_loopback_http_url_with_port_reaches_emulator(kapture_emulator: KaptureEmulator, make_hook) -> None:
    hook = make_hook(host=f"http://127.0.0.1:{kapture_emulator.port}")

    assert hook.settings.base_url == f"http://127.0.0.1:{kapture_emulator.port}"
    assert hook.update_order(SAMPLE_ORDER)["status"] == "success"
    assert [r.order_id for r in kapture_emulator.requests] == [ORDER_ID]


def test_connection_port_field_is_appended_to_host(
    kapture_emulator: KaptureEmulator, kapture_conn_env: Callable[..., str]
) -> None:
    config = kapture_emulator.config
    kapture_conn_env(
        CONN_ID,
        host="http://127.0.0.1",
        port=kapture_emulator.port,
        login=config["username"],
        password=config["password"],
        extra=FAST,
    )
    hook = KaptureHook(kapture_conn_id=CONN_ID)

    assert hook.settings.base_url == kapture_emulator.url
    assert hook.update_order(SAMPLE_ORDER)["status"] == "success"
    hook.close()


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("acme", 443, "https://acme.kapturecrm.com"),
        ("acme", 8443, "https://acme.kapturecrm.com:8443"),
        ("https://acme.kapturecrm.com:8443", 8443, "https://acme.kapturecrm.com:8443"),
        ("http://127.0.0.1", 80, "http://127.0.0.1"),
        ("http://127.0.0.1:8765", 0, "http://127.0.0.1:8765"),  # Airflow 3.3's Test button sends 0 for no port
    ],
)
def test_port_field(kapture_conn_env: Callable[..., str], host: str, port: int, expected: str) -> None:
    kapture_conn_env(CONN_ID, host=host, port=port, login="user", password="secret")

    assert KaptureHook(kapture_conn_id=CONN_ID).settings.base_url == expected


def test_port_contradicting_the_host_is_refused(kapture_conn_env: Callable[..., str]) -> None:
    kapture_conn_env(CONN_ID, host="http://127.0.0.1:8765", port=9000, login="user", password="secret")

    with pytest.raises(ValueError, match="names port 8765 but its Port is 9000"):
        _ = KaptureHook(kapture_conn_id=CONN_ID).settings


@pytest.mark.parametrize("host", ["http://kapture.example.com", "http://acme.kapturecrm.com:8080", "http://10.0.0.5"])
def test_plain_http_to_remote_host_is_refused(make_hook, host: str) -> None:
    hook = make_hook(host=host)

    with pytest.raises(ValueError, match="allow_insecure_http") as caught:
        _ = hook.settings
    assert "http://" in str(caught.value)


@pytest.mark.parametrize("flag", [True, "true", "True", "1", "yes"])
def test_plain_http_to_remote_host_allowed_with_extra(make_hook, flag: Any) -> None:
    hook = make_hook(host="http://kapture.example.com", allow_insecure_http=flag)

    assert hook.settings.base_url == "http://kapture.example.com"


@pytest.mark.parametrize("flag", [False, "false", "", "no"])
def test_plain_http_still_refused_when_extra_is_falsy(make_hook, flag: Any) -> None:
    hook = make_hook(host="http://kapture.example.com", allow_insecure_http=flag)

    with pytest.raises(ValueError, match="allow_insecure_http"):
        _ = hook.settings


@pytest.mark.parametrize("host", ["", "   "])
def test_missing_host_is_refused(make_hook, host: str) -> None:
    with pytest.raises(ValueError, match="no Host"):
        _ = make_hook(host=host).settings


def test_non_http_scheme_is_refused(make_hook) -> None:
    with pytest.raises(ValueError, match="not an http"):
        _ = make_hook(host="ftp://acme.kapturecrm.com").settings


def test_bad_extra_value_is_reported(make_hook) -> None:
    with pytest.raises(ValueError, match="timeout"):
        _ = make_hook(timeout="soon").settings


# -- authentication -----------------------------------------------------------------------------------


def test_login_and_password_sent_as_basic_auth(kapture_emulator: KaptureEmulator, make_hook) -> None:
    login, password = "ops@acme", "pä:ss wörd"
    kapture_emulator.configure(username=login, password=password)
    hook = make_hook(login=login, password=password)

    assert hook.update_order(SAMPLE_ORDER)["status"] == "success"

    (request,) = kapture_emulator.requests
    assert request.authorization == f"Basic {basic_token(login, password)}"
    assert request.stored


@pytest.mark.parametrize("login", ["", None])
def test_empty_login_uses_password_as_ready_made_token(
    kapture_emulator: KaptureEmulator, kapture_conn_env: Callable[..., str], login: str | None
) -> None:
    token = f"ready-made-{uuid.uuid4().hex}"
    kapture_emulator.configure(token=token)
    kapture_conn_env(CONN_ID, host=kapture_emulator.url, login=login, password=token, extra=FAST)
    hook = KaptureHook(kapture_conn_id=CONN_ID)

    assert hook.update_order(SAMPLE_ORDER)["status"] == "success"

    (request,) = kapture_emulator.requests
    assert request.authorization == f"Basic {token}"
    assert request.stored
    hook.close()


def test_missing_password_is_refused(make_hook) -> None:
    with pytest.raises(ValueError, match="no Password"):
        _ = make_hook(password="").settings


def test_basic_token_is_registered_with_the_secret_masker(kapture_emulator: KaptureEmulator, make_hook) -> None:
    from kapture_provider.compat import redact

    login, password = "masker-user", f"masker-{uuid.uuid4().hex}"
    kapture_emulator.configure(username=login, password=password)
    token = basic_token(login, password)
    line = f"sending Authorization: Basic {token} now"
    assert token in redact(line)  # not masked before the hook reads the connection

    assert make_hook(login=login, password=password).settings.authorization == f"Basic {token}"

    redacted = redact(line)
    assert token not in redacted
    assert "sending Authorization: Basic" in redacted


def test_ready_made_token_is_registered_with_the_secret_masker(make_hook) -> None:
    from kapture_provider.compat import redact

    token = f"tok-{uuid.uuid4().hex}"
    assert token in redact(f"x {token} y")

    assert make_hook(login="", password=token).settings.authorization == f"Basic {token}"

    assert token not in redact(f"x {token} y")


# -- outcome classes ---------------------------------------------------------------------------------


def test_success_returns_parsed_answer(kapture_emulator: KaptureEmulator, make_hook) -> None:
    hook = make_hook()

    answer = hook.update_order(SAMPLE_ORDER)

    assert answer["status"] == "success"
    assert answer["message"] == "Order Updated successfully !"
    assert answer["Order"]["result"] is True
    assert isinstance(answer["Order"]["customer_id"], int)
    (request,) = kapture_emulator.requests
    assert request.body == SAMPLE_ORDER
    assert kapture_emulator.orders[ORDER_ID] == SAMPLE_ORDER
    assert hook.requests_sent == 1


@pytest.mark.parametrize(("fault", "status"), [(Fault.HTTP_401, 401), (Fault.HTTP_403, 403)])
def test_401_and_403_are_auth_errors_sent_once(
    kapture_emulator: KaptureEmulator, make_hook, fault: Fault, status: int
) -> None:
    kapture_emulator.script(*[fault] * 5)
    hook = make_hook()

    with pytest.raises(KaptureAuthError) as caught:
        hook.update_order(SAMPLE_ORDER)

    assert len(kapture_emulator.requests) == 1
    assert caught.value.status_code == status
    assert caught.value.order_id == ORDER_ID
    assert not caught.value.retryable
    assert kapture_emulator.orders == {}
    assert_error_text_is_safe(caught.value, *default_secrets(kapture_emulator))


@pytest.mark.parametrize(("failure_mode", "status"), [("body", 200), ("http", 401)])
def test_wrong_password_is_auth_error_sent_once(
    kapture_emulator: KaptureEmulator, make_hook, failure_mode: str, status: int
) -> None:
    kapture_emulator.configure(failure_mode=failure_mode)
    wrong = "not-the-password-123"
    hook = make_hook(password=wrong)

    with pytest.raises(KaptureAuthError, match="Invalid Auth Key") as caught:
        hook.update_order(SAMPLE_ORDER)

    (request,) = kapture_emulator.requests
    assert request.status == status
    assert caught.value.status_code == status
    assert kapture_emulator.orders == {}
    assert_error_text_is_safe(
        caught.value, wrong, basic_token(kapture_emulator.config["username"], wrong), *default_secrets(kapture_emulator)
    )


@pytest.mark.parametrize(("failure_mode", "status"), [("http", 400), ("body", 200)])
def test_order_refused_by_kapture_is_rejected_error_sent_once(
    kapture_emulator: KaptureEmulator, make_hook, failure_mode: str, status: int
) -> None:
    kapture_emulator.configure(failure_mode=failure_mode)
    hook = make_hook()
    # no customer_name: the hook's own validation would stop it, so post the encoded body directly
    body = {"customer_info": {"phone": PHONE, "email_id": EMAIL}, "order_info": {"order_id": ORDER_ID}}

    with pytest.raises(KaptureRejectedError) as caught:
        hook.post_order(json.dumps(body).encode(), order_id=ORDER_ID)

    (request,) = kapture_emulator.requests
    assert request.status == status
    assert caught.value.status_code == status
    assert "customer_info.customer_name is mandatory" in caught.value.message
    assert ORDER_ID in str(caught.value)
    assert kapture_emulator.orders == {}
    assert_error_text_is_safe(caught.value, *default_secrets(kapture_emulator))


@pytest.mark.parametrize(
    ("fault", "status", "message"),
    [(Fault.HTTP_404, 404, "Not Found"), (Fault.FAILED_BODY, 200, "Order Updation Failed")],
)
def test_scripted_refusals_are_rejected_errors_sent_once(
    kapture_emulator: KaptureEmulator, make_hook, fault: Fault, status: int, message: str
) -> None:
    kapture_emulator.script(*[fault] * 5)
    hook = make_hook()

    with pytest.raises(KaptureRejectedError) as caught:
        hook.update_order(SAMPLE_ORDER)

    assert len(kapture_emulator.requests) == 1
    assert caught.value.status_code == status
    assert message in caught.value.message
    assert not caught.value.retryable
    assert kapture_emulator.orders == {}
    assert_error_text_is_safe(caught.value, *default_secrets(kapture_emulator))


TRANSIENT_FAULTS = [
    Fault.HTTP_500,
    Fault.HTTP_502,
    Fault.HTTP_503,
    Fault.HTTP_429,
    Fault.HTTP_429_BARE,
    Fault.RESET,
    Fault.SLOW,
    Fault.NON_JSON,
    Fault.TRUNCATED,
]


def _extras_for(fault: Fault) -> dict[str, Any]:
    # a short read timeout for the "slow" fault (which answers only after slow_seconds)
    return {"timeout": 0.5} if fault is Fault.SLOW else {}


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS, ids=str)
def test_transient_fault_once_is_retried_and_succeeds(
    kapture_emulator: KaptureEmulator, make_hook, fault: Fault
) -> None:
    kapture_emulator.configure(retry_after=0, slow_seconds=1.5)
    kapture_emulator.script(fault)
    hook = make_hook(**_extras_for(fault))

    answer = hook.update_order(SAMPLE_ORDER)

    assert answer["status"] == "success"
    first, second = kapture_emulator.requests
    assert first.fault == str(fault)
    assert second.fault is None
    assert second.stored
    assert second.body == SAMPLE_ORDER
    assert kapture_emulator.orders[ORDER_ID] == SAMPLE_ORDER
    assert hook.requests_sent == 2


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS, ids=str)
def test_transient_fault_exhausts_retries(kapture_emulator: KaptureEmulator, make_hook, fault: Fault) -> None:
    kapture_emulator.configure(retry_after=0, slow_seconds=1.5)
    kapture_emulator.script(*[fault] * 6)
    hook = make_hook(max_retries=2, **_extras_for(fault))

    with pytest.raises(KaptureTransientError) as caught:
        hook.update_order(SAMPLE_ORDER)

    assert len(kapture_emulator.requests) == 3  # max_retries + 1
    assert [r.fault for r in kapture_emulator.requests] == [str(fault)] * 3
    assert caught.value.retryable
    assert caught.value.order_id == ORDER_ID
    assert "gave up after 3 attempts" in str(caught.value)
    assert_error_text_is_safe(caught.value, *default_secrets(kapture_emulator))


@pytest.mark.parametrize("max_retries", [0, 1, 4])
def test_number_of_attempts_is_max_retries_plus_one(
    kapture_emulator: KaptureEmulator, make_hook, max_retries: int
) -> None:
    kapture_emulator.script(*[Fault.HTTP_500] * 10)
    hook = make_hook(max_retries=max_retries)

    with pytest.raises(KaptureTransientError) as caught:
        hook.update_order(SAMPLE_ORDER)

    assert len(kapture_emulator.requests) == max_retries + 1
    assert caught.value.status_code == 500
    assert "Internal Server Error" in str(caught.value)


def test_hook_max_retries_argument_overrides_extra(kapture_emulator: KaptureEmulator, make_hook) -> None:
    make_hook(max_retries=4)
    hook = KaptureHook(kapture_conn_id=CONN_ID, max_retries=1)
    kapture_emulator.script(*[Fault.HTTP_503] * 10)
    kapture_emulator.configure(retry_after=0)

    with pytest.raises(KaptureTransientError):
        hook.update_order(SAMPLE_ORDER)

    assert len(kapture_emulator.requests) == 2
    hook.close()


def test_502_html_error_text_has_an_excerpt(kapture_emulator: KaptureEmulator, make_hook) -> None:
    kapture_emulator.script(*[Fault.HTTP_502] * 3)
    hook = make_hook(max_retries=0)

    with pytest.raises(KaptureTransientError) as caught:
        hook.update_order(SAMPLE_ORDER)

    assert caught.value.status_code == 502
    assert "502 Bad Gateway" in str(caught.value)


@pytest.mark.parametrize("fault", [Fault.HTTP_429, Fault.HTTP_503], ids=str)
def test_retry_after_is_honoured(kapture_emulator: KaptureEmulator, make_hook, fault: Fault) -> None:
    kapture_emulator.configure(retry_after=1)
    kapture_emulator.script(fault)
    hook = make_hook()

    started = time.monotonic()
    answer = hook.update_order(SAMPLE_ORDER)
    elapsed = time.monotonic() - started

    assert answer["status"] == "success"
    assert [r.fault for r in kapture_emulator.requests] == [str(fault), None]
    assert elapsed >= 1.0


def test_read_timeout_is_respected(kapture_emulator: KaptureEmulator, make_hook) -> None:
    # Were the 0.3 s read timeout ignored, the first slow answer (a success after 1 s) would be returned.
    kapture_emulator.configure(slow_seconds=1.0)
    kapture_emulator.script(*[Fault.SLOW] * 6)
    hook = make_hook(timeout=0.3, max_retries=2)

    with pytest.raises(KaptureTransientError, match="timeout") as caught:
        hook.update_order(SAMPLE_ORDER)

    assert len(kapture_emulator.requests) == 3
    assert hook.requests_sent == 3
    assert caught.value.retryable


class _NoStatusHandler(BaseHTTPRequestHandler):
    """Answers every POST with 200 and JSON that has no ``status`` (the emulator has no such fault)."""

    protocol_version = "HTTP/1.1"
    answer = b'{"result": true, "Order": {"customer_id": 424242, "note": "queued for later"}}'
    received: list[bytes] = []

    def do_POST(self) -> None:
        self.received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def no_status_server() -> Iterator[tuple[str, list[bytes]]]:
    handler = type("Handler", (_NoStatusHandler,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler.received
    server.shutdown()
    server.server_close()


def test_json_without_status_is_response_error(
    kapture_emulator: KaptureEmulator, make_hook, no_status_server: tuple[str, list[bytes]]
) -> None:
    url, received = no_status_server
    hook = make_hook(host=url)

    with pytest.raises(KaptureResponseError) as caught:
        hook.update_order(SAMPLE_ORDER)

    assert len(received) == 1  # not retried
    assert json.loads(received[0]) == SAMPLE_ORDER
    assert caught.value.status_code == 200
    assert "424242" in str(caught.value) or "customer_id" in str(caught.value)
    assert "queued for later" in str(caught.value)
    assert not caught.value.retryable
    assert_error_text_is_safe(caught.value, *default_secrets(kapture_emulator))


class _ClosingHandler(BaseHTTPRequestHandler):
    """Answers with success, framed as ``style`` says:

    ``silent-close``: keep-alive announced, then the connection closed anyway (as an idle timeout would);
    ``chunked``: a chunked body, the connection kept; ``close``: ``Connection: close``, then closed.
    """

    protocol_version = "HTTP/1.1"
    answer = b'{"status": "success", "message": "Order Updated successfully !"}'
    connections: list[int] = []
    style = "silent-close"

    def do_POST(self) -> None:
        self.connections.append(self.client_address[1])  # the client's port: one per connection
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.style == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(self.answer) // 2
            for piece in (self.answer[:half], self.answer[half:], b""):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            return
        if self.style == "close":
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)
        self.close_connection = True  # silent-close: no "Connection: close" header, the client finds out later

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_idle_connection_closed_by_the_server_is_not_reused(kapture_emulator: KaptureEmulator, make_hook) -> None:
    handler = type("Handler", (_ClosingHandler,), {"connections": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        hook = make_hook(host=f"http://127.0.0.1:{server.server_port}", max_retries=0)  # a failed reuse would fail
        for _ in range(3):
            hook.update_order(SAMPLE_ORDER)
            time.sleep(0.05)  # let the server's close arrive
    finally:
        server.shutdown()
        server.server_close()
    assert hook.requests_sent == 3
    assert len(set(handler.connections)) == 3  # each order on a fresh connection, none lost to a dead one


@pytest.mark.parametrize(("style", "connections"), [("chunked", 1), ("close", 3)])
def test_answers_chunked_or_closing_are_read_and_the_connection_reused_only_when_kept(
    make_hook, style: str, connections: int
) -> None:
    handler = type("Handler", (_ClosingHandler,), {"connections": [], "style": style})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        hook = make_hook(host=f"http://127.0.0.1:{server.server_port}", max_retries=0)
        answers = [hook.update_order(SAMPLE_ORDER) for _ in range(3)]
    finally:
        server.shutdown()
        server.server_close()
    assert [answer["status"] for answer in answers] == ["success"] * 3
    assert hook.requests_sent == 3
    assert len(set(handler.connections)) == connections


def test_invalid_order_is_not_sent(kapture_emulator: KaptureEmulator, make_hook) -> None:
    from kapture_provider.payload import InvalidOrder

    hook = make_hook()

    with pytest.raises(InvalidOrder, match=r"customer_info\.customer_name"):
        hook.update_order({"customer_info": {"customer_name": " "}, "order_info": {"order_id": "9"}})

    assert kapture_emulator.requests == []


# -- network failures: named, with the host, as attributes of the error -----------------------------


def read_until_closed(connection: socket.socket) -> None:
    while connection.recv(65536):
        pass


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A loopback port whose listen queue is full: a new connection is never accepted (connect times out)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    queued = socket.create_connection(("127.0.0.1", port))  # fills the queue; nobody accepts it
    yield port
    queued.close()
    listener.close()


def test_dns_failure_names_the_host(make_hook) -> None:
    hook = make_hook(host="https://kapture-test.invalid", max_retries=1)

    with pytest.raises(KaptureTransientError) as caught:
        hook.update_order(SAMPLE_ORDER)

    error = caught.value
    assert (error.cause, error.host, error.retryable) == (Cause.DNS, "kapture-test.invalid:443", True)
    assert "the host name kapture-test.invalid (the connection's Host) could not be resolved" in error.message
    assert hook.requests_sent == 2  # retried: a resolver can fail for a moment


def test_refused_connection_names_host_and_port(make_hook) -> None:
    port = closed_port()
    hook = make_hook(host=f"http://127.0.0.1:{port}", max_retries=0)

    with pytest.raises(KaptureTransientError) as caught:
        hook.update_order(SAMPLE_ORDER)

    assert (caught.value.cause, caught.value.host) == (Cause.REFUSED, f"127.0.0.1:{port}")
    assert f"order {ORDER_ID}: 127.0.0.1:{port} refused the connection" in caught.value.message


def test_connect_timeout_is_told_apart_from_read_timeout(make_hook, full_backlog: int) -> None:
    hook = make_hook(host=f"http://127.0.0.1:{full_backlog}", connect_timeout=0.3, max_retries=0)

    with pytest.raises(KaptureTransientError) as caught:
        hook.update_order(SAMPLE_ORDER)

    assert (caught.value.cause, caught.value.host) == (Cause.CONNECT_TIMEOUT, f"127.0.0.1:{full_backlog}")
    assert f"no connection to 127.0.0.1:{full_backlog} within the connect timeout (0.3 s)" in caught.value.message


@pytest.mark.parametrize(
    ("fault", "cause", "text"),
    [
        (Fault.SLOW, Cause.READ_TIMEOUT, "sent no complete answer within the read timeout (0.3 s)"),
        (Fault.RESET, Cause.RESET, "was reset or closed before the answer"),
    ],
    ids=str,
)
def test_failures_after_connecting_are_named(
    kapture_emulator: KaptureEmulator, make_hook, fault: Fault, cause: Cause, text: str
) -> None:
    kapture_emulator.configure(slow_seconds=1.0)
    kapture_emulator.script(fault)
    hook = make_hook(timeout=0.3, max_retries=0)

    with pytest.raises(KaptureTransientError) as caught:
        hook.update_order(SAMPLE_ORDER)

    host = f"127.0.0.1:{kapture_emulator.port}"
    assert (caught.value.cause, caught.value.host) == (cause, host)
    assert f"order {ORDER_ID}: " in caught.value.message and host in caught.value.message
    assert text in caught.value.message


def test_answer_cut_off_before_its_length_is_named(make_hook) -> None:
    """A server that announces 100 bytes, sends 10 and hangs up (the emulator's "truncated" fault sends
    a complete answer whose JSON is cut: that one is a body that is not JSON)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_once() -> None:
        connection, _ = listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request or not request.endswith(b"}"):  # headers and the JSON body
                request += connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
            connection.sendall(b'{"status":')
            connection.shutdown(socket.SHUT_WR)  # hang up, then wait for the client to close (no reset)
            read_until_closed(connection)

    server = threading.Thread(target=answer_once, daemon=True)
    server.start()
    hook = make_hook(host=f"http://127.0.0.1:{port}", max_retries=0)
    try:
        with pytest.raises(KaptureTransientError) as caught:
            hook.update_order(SAMPLE_ORDER)
    finally:
        server.join(timeout=5)
        listener.close()

    assert (caught.value.cause, caught.value.host) == (Cause.CUT_OFF, f"127.0.0.1:{port}")
    assert f"order {ORDER_ID}: the answer from 127.0.0.1:{port} was cut off" in caught.value.message


# -- test_connection: one sentence naming the host, per outcome ---------------------------------------


@pytest.mark.parametrize("failure_mode", ["body", "http"])
def test_test_connection_with_good_credentials(kapture_emulator: KaptureEmulator, make_hook, failure_mode: str) -> None:
    kapture_emulator.configure(failure_mode=failure_mode)
    hook = make_hook()
    hook.update_order(SAMPLE_ORDER)
    orders_before, counts_before = kapture_emulator.orders, kapture_emulator.update_counts
    seen_before = len(kapture_emulator.requests)

    ok, message = hook.test_connection()

    assert ok is True, message
    assert message == f"Connected to Kapture at {kapture_emulator.url}; the credentials were accepted"
    new = kapture_emulator.requests[seen_before:]
    assert [r.path for r in new] == [SEARCH_PATH]
    assert not any(r.stored for r in new)
    assert kapture_emulator.orders == orders_before
    assert kapture_emulator.update_counts == counts_before


@pytest.mark.parametrize(("failure_mode", "status"), [("body", 200), ("http", 401)])
def test_test_connection_with_bad_credentials(
    kapture_emulator: KaptureEmulator, make_hook, failure_mode: str, status: int
) -> None:
    kapture_emulator.configure(failure_mode=failure_mode)
    wrong = "wrong-password-456"
    hook = make_hook(password=wrong)

    ok, message = hook.test_connection()

    assert ok is False
    assert message == (
        f"127.0.0.1:{kapture_emulator.port} refused the credentials (HTTP {status}: Invalid Auth Key); "
        "check the User name and Password"
    )
    assert wrong not in message
    assert [r.path for r in kapture_emulator.requests] == [SEARCH_PATH]
    assert add_update_requests(kapture_emulator) == []
    assert kapture_emulator.orders == {}


def test_test_connection_with_a_closed_port(make_hook) -> None:
    port = closed_port()
    hook = make_hook(host=f"http://127.0.0.1:{port}")

    ok, message = hook.test_connection()

    assert ok is False
    assert message == (
        f"127.0.0.1:{port} refused the connection (nothing listens on that port, or a firewall rejects it)"
    )
    assert hook.requests_sent == 1


def test_test_connection_with_an_unknown_host(make_hook) -> None:
    ok, message = make_hook(host="kapture-test.invalid").test_connection()

    assert ok is False
    assert message.startswith("the host name kapture-test.invalid (the connection's Host) could not be resolved")
    assert message.count("kapture-test.invalid") == 1


def test_test_connection_with_a_connect_timeout(make_hook, full_backlog: int) -> None:
    ok, message = make_hook(host=f"http://127.0.0.1:{full_backlog}", connect_timeout=0.3).test_connection()

    assert ok is False
    assert message == f"no connection to 127.0.0.1:{full_backlog} within the connect timeout (0.3 s)"


def test_test_connection_with_refused_plain_http(make_hook) -> None:
    ok, message = make_hook(host="http://kapture.example.com").test_connection()

    assert ok is False
    assert "kapture.example.com" in message and "allow_insecure_http" in message


def test_test_connection_on_wrong_path_is_not_success(kapture_emulator: KaptureEmulator, make_hook) -> None:
    hook = make_hook(host=f"{kapture_emulator.url}/not-kapture", password="wrong-password-789")

    ok, message = hook.test_connection()

    assert [r.status for r in kapture_emulator.requests] == [404]
    assert ok is False, message  # a 404 proves nothing about the credentials
    assert message == (
        f"127.0.0.1:{kapture_emulator.port} is not Kapture's API: its order search "
        f"{kapture_emulator.url}/not-kapture{SEARCH_PATH} answered HTTP 404; check the Host (the base URL or the "
        "subdomain)"
    )
    assert "wrong-password-789" not in message


class _FixedAnswerHandler(BaseHTTPRequestHandler):
    """Answers every request with ``answer``: (status, content type, extra headers, body)."""

    protocol_version = "HTTP/1.1"
    answer: tuple[int, str, dict[str, str], bytes] = (200, "text/plain", {}, b"")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, content_type, headers, body = self.answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("answer", "described"),
    [
        ((405, "text/html", {"Allow": "GET"}, b"<h1>Method Not Allowed</h1>"), "answered HTTP 405"),
        ((302, "text/html", {"Location": "https://example.com/login"}, b""), "answered HTTP 302"),
        (
            (200, "text/html", {}, b"<html><body>Welcome to nginx!</body></html>"),
            "HTTP 200 with a body that is not JSON",
        ),
        ((200, "application/json", {}, b'{"ok": true}'), "answered JSON without a status"),
    ],
    ids=["405", "redirect", "html-page", "json-without-status"],
)
def test_test_connection_to_a_server_that_is_not_kapture(
    make_hook, answer: tuple[int, str, dict[str, str], bytes], described: str
) -> None:
    handler = type("Handler", (_FixedAnswerHandler,), {"answer": answer})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        ok, message = make_hook(host=f"http://127.0.0.1:{server.server_port}").test_connection()
    finally:
        server.shutdown()
        server.server_close()

    assert ok is False
    assert message.startswith(f"127.0.0.1:{server.server_port} is not Kapture's API: its order search ")
    assert described in message
    assert "refused the order" not in message
