"""Security: nothing secret or personal in anything a run leaves behind; TLS on; credentials never leave Kapture's host.

* A full sync through real DAG runs (``dag.test``), with transient faults, refused orders and invalid rows,
  then against a Kapture that echoes the customer's phone and email in its error messages. Everything the
  runs produced is searched — task logs (``dag.test`` runs the task in-process and writes its log to the
  output, captured here; files under ``AIRFLOW_HOME/logs`` are searched too, but it writes none; the logs
  of the ``airflow dags test`` subprocesses are searched in ``test_crash_resume.py``), XCom values,
  rendered template fields and the audit log in the metadata DB, the exception texts, the ledger's
  ``last_error`` — for the password, the Basic token, ``login:password``, and every customer name, phone
  number and email address of the warehouse. (``pending_body`` is excluded: it holds the bodies still
  owed to Kapture, by design.)
* UpdateOrderOperator: the rendered ``orders`` stored for the UI (``rendered_task_instance_fields``) show
  ``***`` instead of the customer's phone and email, while Kapture receives the real values.
* TLS verification is on (a self-signed server is refused at once, not retried; proxies and private CAs
  are tested in ``tests/hooks/test_proxy_and_tls.py``); plain http to a non-loopback host is refused
  with a clear error unless ``allow_insecure_http``; a redirect to another host (or port) never carries
  the Authorization header there.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import ssl
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pendulum
import pytest
from reliability_kit import (
    EXAMPLE_TASK_ID,
    FAST_BACKOFF,
    FakeTaskInstance,
    ledger_rows,
    load_example_dag,
)

from kapture_provider.compat import DAG, AirflowException, AirflowFailException, CronDataIntervalTimetable
from kapture_provider.exceptions import KaptureConnectionError, KaptureError, KaptureRejectedError
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.operators.update_order import UpdateOrderOperator
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.testing.warehouse import generate_orders
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

pytestmark = pytest.mark.unit

LOGIN = "sync-robot"
DAY = dt.datetime(2026, 11, 26)
FAULTS = ["500", "502", "reset", "truncated", "non-json", "failed-body", "404", "429-bare"]


# --------------------------------------------------------------------------------------------------
# a Kapture that repeats personal data back in its errors, and other small servers
# --------------------------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Records every request; answers as ``server.answer(handler, body)`` says."""

    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
        status, headers, payload = self.server.answer(self, body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, answer: Any, port: int = 0, tls: ssl.SSLContext | None = None):
        super().__init__((host, port), _Recorder)
        self.answer = answer
        self.seen: list[dict[str, Any]] = []
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def echoing_kapture(handler: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """Refuses two orders in three, quoting the customer's name, phone and email back (JSON or an HTML page)."""
    order = json.loads(body)
    customer = order["customer_info"]
    who = f"{customer['customer_name']} (phone {customer.get('phone')}, email {customer.get('email_id')})"
    kind = int(order["order_info"]["order_id"]) % 3
    if kind == 0:
        message = f"Order Updation Failed: customer {who} already has an open order"
        return 200, {"Content-Type": "application/json"}, json.dumps({"status": "failed", "message": message}).encode()
    if kind == 1:
        page = f"<html><body><h1>502 Bad Gateway</h1><p>upstream rejected {who}</p></body></html>"
        return 502, {"Content-Type": "text/html"}, page.encode()
    return (
        200,
        {"Content-Type": "application/json"},
        b'{"status": "success", "message": "Order Updated successfully !"}',
    )


# --------------------------------------------------------------------------------------------------
# everything a run leaves behind
# --------------------------------------------------------------------------------------------------


def metadata_texts(dag_ids: list[str]) -> dict[str, str]:
    """XCom values, rendered template fields and the audit log of these DAGs, as stored (raw text)."""
    from airflow.models.log import Log
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        xcoms = session.execute(select(XComModel.key, XComModel.value).where(XComModel.dag_id.in_(dag_ids))).all()
        rtif = session.scalars(select(RTIF.rendered_fields).where(RTIF.dag_id.in_(dag_ids))).all()
        audit = session.execute(select(Log.event, Log.extra).where(Log.dag_id.in_(dag_ids))).all()
    return {
        "xcom": json.dumps([[k, v] for k, v in xcoms], default=str),
        "rendered_task_instance_fields": json.dumps(rtif, default=str),
        "audit_log": json.dumps([list(row) for row in audit], default=str),
    }


def log_files(dag_ids: list[str]) -> str:
    home = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    texts = [
        p.read_text(errors="replace") for p in home.rglob("*") if p.is_file() and any(d in str(p) for d in dag_ids)
    ]
    return "\n".join(texts)


def find_leaks(sources: dict[str, str], needles: dict[str, str]) -> list[str]:
    """``where: what`` for every needle found in a source (JSON-escaped forms included)."""
    pattern = re.compile("|".join(sorted({re.escape(n) for n in needles}, key=len, reverse=True)))
    leaks = []
    for where, text in sources.items():
        for found in set(pattern.findall(text)):
            leaks.append(f"{where}: {needles[found]}")
    return sorted(leaks)


# --------------------------------------------------------------------------------------------------
# the full sync
# --------------------------------------------------------------------------------------------------


def sync_dag(kapture_conn_id: str) -> Any:
    """The example DAG's task (query, interval parameters, version column, tolerance), without Airflow retries."""
    example = load_example_dag().get_task(EXAMPLE_TASK_ID)
    with DAG(
        dag_id=f"kapture_security_{uuid.uuid4().hex[:8]}",
        schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
        start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
        catchup=False,
        default_args={"retries": 0},
    ) as dag:
        SqlToKaptureOrdersOperator(
            task_id="sync",
            sql_conn_id=example.sql_conn_id,
            sql=example.sql,
            window_parameters=example.window_parameters,
            kapture_conn_id=kapture_conn_id,
            version_column=example.version_column,
            max_concurrency=example.max_concurrency,
            max_failed_ratio=example.max_failed_ratio,
        )
    return dag


def test_full_sync_leaves_no_secret_or_personal_data_anywhere(
    sqlite_warehouse: Any, run_dag_at: Any, monkeypatch: pytest.MonkeyPatch, capfd: Any, caplog: Any
) -> None:
    password = f"Pw-{uuid.uuid4().hex}!"
    token = base64.b64encode(f"{LOGIN}:{password}".encode()).decode("ascii")
    hour_1 = list(generate_orders(300, DAY + dt.timedelta(hours=1), DAY + dt.timedelta(hours=2), invalid=3, seed=3))
    hour_2 = list(
        generate_orders(150, DAY + dt.timedelta(hours=2), DAY + dt.timedelta(hours=3), seed=4, first_id=24_000_000)
    )
    sqlite_warehouse.insert_orders(hour_1 + hour_2)
    needles = {password: "the password", token: "the Basic token", f"{LOGIN}:{password}": "login:password"}
    for row in hour_1 + hour_2:
        needles[row[2]] = f"phone of order {row[0]}"
        needles[row[3]] = f"email of order {row[0]}"
        if row[1]:
            needles[row[1]] = f"name of order {row[0]}"  # Kapture quotes it back: blanked from its message
    exceptions: list[str] = []
    echo = LocalServer("127.0.0.1", echoing_kapture)
    try:
        with KaptureEmulator(username=LOGIN, password=password, seed=7, retry_after=0) as emulator:
            emulator.configure(fault_rate=0.3, fault_kinds=FAULTS)
            extras = {**FAST_BACKOFF, "max_retries": 1}
            for conn_id, url in (("FAULTY", emulator.url), ("ECHO", echo.url)):  # both with this test's credentials
                monkeypatch.setenv(
                    f"AIRFLOW_CONN_KAPTURE_{conn_id}",
                    json.dumps(
                        {"conn_type": "kapture", "host": url, "login": LOGIN, "password": password, "extra": extras}
                    ),
                )
            first_dag, second_dag = sync_dag("kapture_faulty"), sync_dag("kapture_echo")
            first = run_dag_at(first_dag, dt.datetime(2026, 11, 26, 2, tzinfo=dt.UTC))
            faults_seen = sum(1 for r in emulator.requests if r.path == ADD_UPDATE_PATH and r.fault)
        second = run_dag_at(second_dag, dt.datetime(2026, 11, 26, 3, tzinfo=dt.UTC))
        # the same failure once more outside Airflow, to search the exception's own text
        example = load_example_dag().get_task(EXAMPLE_TASK_ID)
        try:
            SqlToKaptureOrdersOperator(
                task_id="direct",
                sql_conn_id="erp_warehouse",
                sql=example.sql,
                kapture_conn_id="kapture_echo",
                parameters={"start": "2026-11-26 02:00:00", "end": "2026-11-26 03:00:00"},
            ).execute({"ti": FakeTaskInstance()})  # type: ignore[arg-type]
        except AirflowException as err:
            exceptions.append(repr(err))
        hook = KaptureHook("kapture_echo")
        for row in hour_2[:6]:
            try:
                hook.update_order(
                    {
                        "customer_info": {"customer_name": row[1], "phone": row[2], "email_id": row[3]},
                        "order_info": {"order_id": row[0]},
                    }
                )
            except KaptureError as err:
                exceptions.append(f"{err!r} {err} {err.message}")
        hook.close()
    finally:
        echo.close()

    out, err = capfd.readouterr()
    dag_ids = [first_dag.dag_id, second_dag.dag_id]
    ledger = ledger_rows(sqlite_warehouse.path)
    sources = {
        "captured output": out + err,
        "captured log records": caplog.text,
        "task log files": log_files(dag_ids),
        **metadata_texts(dag_ids),
        "exception texts": "\n".join(exceptions),
        "ledger last_error": "\n".join(str(entry["last_error"]) for entry in ledger.values()),
    }
    # the searched material is the real thing: the error paths ran and were recorded
    assert first.state == "failed" and second.state == "failed", (first.task_states, second.task_states)
    assert faults_seen > 0 and len(echo.seen) > 0
    assert "Kapture sync summary" in sources["captured output"] + sources["captured log records"]
    assert "Not delivered" in sources["captured output"] + sources["captured log records"]
    assert "failed_orders" in sources["xcom"] and "erp_orders" in sources["rendered_task_instance_fields"]
    assert "already has an open order" in sources["ledger last_error"]  # Kapture's echoed message, scrubbed
    assert "<personal data>" in sources["ledger last_error"]  # the order's own name, phone and email blanked
    assert len(exceptions) >= 5
    # and the echo server really received what must not come back
    received = b"".join(s["body"] for s in echo.seen).decode()
    assert all(value in received for value in hour_2[-1][1:4])  # name, phone, email
    assert any(s["headers"].get("Authorization") == f"Basic {token}" for s in echo.seen)

    leaks = find_leaks({k: v for k, v in sources.items() if v}, needles)
    assert not leaks, "\n".join(leaks[:50])


# --------------------------------------------------------------------------------------------------
# UpdateOrderOperator: the rendered template shows *** for personal values
# --------------------------------------------------------------------------------------------------


def test_update_order_rendered_fields_mask_phone_and_email(
    kapture_emulator: KaptureEmulator, monkeypatch: pytest.MonkeyPatch, run_dag: Any
) -> None:
    phone, email, name = "9380491257", f"meera.{uuid.uuid4().hex[:6]}@example.com", "Meera Iyer"
    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", kapture_emulator.connection_json(**FAST_BACKOFF))
    with DAG(
        dag_id=f"kapture_rtif_{uuid.uuid4().hex[:8]}",
        schedule=None,
        start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
        params={"phone": phone, "email": email, "name": name, "order_id": "23518265"},
    ) as dag:
        UpdateOrderOperator(
            task_id="update",
            orders={
                "customer_info": {
                    "customer_name": "{{ params.name }}",
                    "phone": "{{ params.phone }}",
                    "email_id": "{{ params.email }}",
                },
                "contact_info": [
                    {"contact_person_phone": "{{ params.phone }}", "contact_person_email": "{{ params.email }}"}
                ],
                "order_info": {"order_id": "{{ params.order_id }}", "remarks": "call {{ params.phone }}"},
            },
        )
    result = run_dag(dag)

    assert result.task_states == {"update": "success"}
    rendered = metadata_texts([dag.dag_id])["rendered_task_instance_fields"]
    assert "23518265" in rendered and "***" in rendered  # the rendered orders were stored, masked
    assert phone not in rendered and email not in rendered
    assert name not in rendered
    body = kapture_emulator.orders["23518265"]  # masking is for display only: Kapture got the real values
    assert (body["customer_info"]["phone"], body["customer_info"]["email_id"]) == (phone, email)
    assert body["contact_info"][0]["contact_person_email"] == email
    assert body["order_info"]["remarks"] == f"call {phone}"


# --------------------------------------------------------------------------------------------------
# TLS, plain http, redirects
# --------------------------------------------------------------------------------------------------


def test_https_is_the_default_scheme(kapture_conn_env: Any) -> None:
    kapture_conn_env("kapture_tls", host="acme", login=LOGIN, password="pw")
    assert KaptureHook("kapture_tls").settings.base_url == "https://acme.kapturecrm.com"


@pytest.fixture
def self_signed_server(tmp_path: Path) -> Iterator[LocalServer]:
    """An HTTPS server on loopback with a self-signed certificate for 127.0.0.1 (not trusted by anyone)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = LocalServer("127.0.0.1", lambda handler, body: (200, {}, b'{"status": "success"}'), tls=context)
    yield server
    server.close()


def test_self_signed_certificate_is_refused(self_signed_server: LocalServer, kapture_conn_env: Any) -> None:
    port = self_signed_server.server_address[1]
    kapture_conn_env(
        "kapture_tls",
        host=f"https://127.0.0.1:{port}",
        login=LOGIN,
        password="pw",
        extra={**FAST_BACKOFF, "max_retries": 1},
    )
    hook = KaptureHook("kapture_tls")
    with pytest.raises(KaptureConnectionError, match=r"TLS certificate of 127\.0\.0\.1:\d+ is not trusted") as refused:
        hook.update_order({"customer_info": {"customer_name": "A"}, "order_info": {"order_id": "1"}})
    assert not refused.value.retryable and hook.requests_sent == 1  # settings to change: not retried
    assert self_signed_server.seen == []  # the handshake failed: no request, no Authorization header, went out


@pytest.mark.parametrize("host", ["http://example.com", "http://10.1.2.3:8080", "http://kapture.internal/base"])
def test_plain_http_to_a_remote_host_is_refused_before_connecting(
    host: str, kapture_conn_env: Any, sqlite_warehouse: Any
) -> None:
    kapture_conn_env("kapture_plain", host=host, login=LOGIN, password="pw")
    with pytest.raises(ValueError, match=r"refusing plain http://.*allow_insecure_http"):
        KaptureHook("kapture_plain").settings  # noqa: B018
    sqlite_warehouse.insert_orders(list(generate_orders(5, DAY, DAY + dt.timedelta(hours=1))))
    operator = SqlToKaptureOrdersOperator(
        task_id="plain",
        sql_conn_id="erp_warehouse",
        sql="SELECT order_id, customer_name FROM erp_orders",
        kapture_conn_id="kapture_plain",
    )
    with pytest.raises(Exception, match=r"refusing plain http://") as failure:  # a clear error from the task too
        operator.execute({"ti": FakeTaskInstance()})  # type: ignore[arg-type]
    assert isinstance(failure.value, AirflowFailException), f"retryable: {failure.value!r}"
    kapture_conn_env("kapture_plain", host=host, login=LOGIN, password="pw", extra={"allow_insecure_http": True})
    assert KaptureHook("kapture_plain").settings.base_url.startswith("http://")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("target_host", ["127.0.0.2", "localhost"])
def test_redirect_never_carries_the_credentials_elsewhere(
    status: int, target_host: str, kapture_conn_env: Any, reliability_report: Any
) -> None:
    other = LocalServer(
        "127.0.0.2" if target_host == "127.0.0.2" else "127.0.0.1",
        lambda handler, body: (200, {}, b'{"status": "success"}'),
    )
    location = f"http://{target_host}:{other.server_address[1]}{ADD_UPDATE_PATH}"
    redirecting = LocalServer("127.0.0.1", lambda handler, body: (status, {"Location": location}, b""))
    try:
        kapture_conn_env(
            "kapture_redirect",
            host=redirecting.url,
            login=LOGIN,
            password="pw-redirect",
            extra={**FAST_BACKOFF, "max_retries": 2},
        )
        hook = KaptureHook("kapture_redirect")
        with pytest.raises(KaptureRejectedError, match="redirect") as refused:
            hook.update_order({"customer_info": {"customer_name": "A"}, "order_info": {"order_id": "1"}})
        ok, message = hook.test_connection()
        operator = UpdateOrderOperator(
            task_id="u",
            kapture_conn_id="kapture_redirect",
            orders={"customer_info": {"customer_name": "A"}, "order_info": {"order_id": "2"}},
        )
        with pytest.raises(AirflowException):
            operator.execute({"ti": FakeTaskInstance()})  # type: ignore[arg-type]
        hook.close()
    finally:
        redirecting.close()
        other.close()
    token = base64.b64encode(f"{LOGIN}:pw-redirect".encode()).decode()
    assert [s["headers"].get("Authorization") for s in redirecting.seen] == [f"Basic {token}"] * 3
    assert other.seen == [], "the redirect was followed"
    assert not ok and "redirect" in message.lower()
    assert "pw-redirect" not in str(refused.value) and token not in str(refused.value)
    reliability_report(kind="redirect", status=status, target=target_host, requests_to_target=len(other.seen))
