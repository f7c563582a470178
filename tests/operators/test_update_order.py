"""UpdateOrderOperator in real DAG runs (``dag.test()``) against the Kapture emulator on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pendulum
import pytest

from kapture_provider.compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_1_PLUS
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, Fault, KaptureEmulator

pytestmark = pytest.mark.unit

CONN_ID = "kapture_operator_test"
TASK_ID = "update_orders"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "max_retries": 2}
PEOPLE = [
    ("Alvarez Quintana", "9380491257", "alvarez.q@example.com"),
    ("Beatrix Okonkwo", "9812345670", "beatrix.o@example.org"),
    ("Cassius Lindqvist", "9900112233", "cassius.l@example.net"),
]


def order(number: int, *, order_id: str | None = None, **order_info: Any) -> dict[str, Any]:
    name, phone, email = PEOPLE[number % len(PEOPLE)]
    return {
        "customer_info": {"customer_name": name, "phone": phone, "email_id": email},
        "contact_info": [{"contact_person_name": name, "contact_person_phone": phone}],
        "order_info": {"order_id": order_id or f"ORD-{number}", "invoice_no": f"INV-{number}", **order_info},
    }


def personal_values() -> list[str]:
    return [value for person in PEOPLE for value in person]


#: Airflow 3.0's ``dag.test()`` prints, unmasked, every message between the task and its in-process stand-in
#: for the supervisor (the secret a ``MaskSecret`` message registers, the rendered fields) and tracebacks
#: with their local variables: Airflow's own console output, which 3.1 no longer prints.
console_masks_secrets = pytest.mark.skipif(
    AIRFLOW_V_3_0_PLUS and not AIRFLOW_V_3_1_PLUS,
    reason="Airflow 3.0's dag.test() prints supervisor messages and traceback locals unmasked",
)


@pytest.fixture
def secrets(kapture_emulator: KaptureEmulator) -> dict[str, str]:
    """Give the emulator a unique password so it can be searched for in logs, XCom and errors."""
    login, password = "operator-user", f"pw-{uuid.uuid4().hex}"
    kapture_emulator.configure(username=login, password=password)
    token = base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
    return {"login": login, "password": password, "token": token}


@pytest.fixture
def conn(
    kapture_emulator: KaptureEmulator, kapture_conn_env: Callable[..., str], secrets: dict[str, str]
) -> Callable[..., str]:
    """Factory: point ``AIRFLOW_CONN_KAPTURE_OPERATOR_TEST`` at the emulator (fast retries); returns the id."""

    def set_connection(*, password: str | None = None) -> str:
        return kapture_conn_env(
            CONN_ID,
            host=kapture_emulator.url,
            login=secrets["login"],
            password=secrets["password"] if password is None else password,
            extra=FAST,
        )

    return set_connection


def make_dag(**operator_kwargs: Any) -> Any:
    from kapture_provider.compat import DAG
    from kapture_provider.operators.update_order import UpdateOrderOperator

    with DAG(
        f"kapture_update_order_{uuid.uuid4().hex[:10]}",
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        UpdateOrderOperator(task_id=TASK_ID, kapture_conn_id=CONN_ID, **operator_kwargs)
    return dag


def sent_order_ids(emulator: KaptureEmulator) -> list[str | None]:
    return [r.order_id for r in emulator.requests if r.path == ADD_UPDATE_PATH]


def assert_free_of(text: str, *needles: str) -> None:
    for needle in needles:
        assert needle not in text


# -- real DAG runs ----------------------------------------------------------------------------------------


def test_single_order(kapture_emulator: KaptureEmulator, conn, run_dag) -> None:
    conn()
    body = order(0)

    result = run_dag(make_dag(orders=body))

    assert result.task_states == {TASK_ID: "success"}
    assert result.state == "success"
    assert kapture_emulator.orders == {"ORD-0": body}
    assert result.xcom(TASK_ID) == {
        "succeeded": 1,
        "failed": 0,
        "invalid": 0,
        "orders": [{"position": 0, "order_id": "ORD-0", "status": "succeeded", "error": None}],
    }


def test_list_of_orders_rendered_with_templates_and_timezone(kapture_emulator: KaptureEmulator, conn, run_dag) -> None:
    conn()
    paid = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)
    orders = [
        order(0, remarks="run {{ run_id }}"),
        order(1, invoice_date=paid, associate_fields={"amount": Decimal("12345678901234567890.50")}),
        order(2, order_id="000123"),
    ]

    result = run_dag(make_dag(orders=orders, timezone="Asia/Kolkata"))

    assert result.task_states == {TASK_ID: "success"}
    stored = kapture_emulator.orders
    assert sorted(stored) == ["000123", "ORD-0", "ORD-1"]
    assert stored["ORD-0"]["order_info"]["remarks"] == f"run {result.dag_run.run_id}"
    assert stored["ORD-1"]["order_info"]["invoice_date"] == "2024-01-01 17:30:00"
    amount = kapture_emulator.requests[1].body["order_info"]["associate_fields"]["amount"]
    assert amount == 12345678901234567890.50  # arrived as a JSON number
    assert stored["000123"]["customer_info"] == order(2)["customer_info"]
    summary = result.xcom(TASK_ID)
    assert (summary["succeeded"], summary["failed"], summary["invalid"]) == (3, 0, 0)
    assert [o["order_id"] for o in summary["orders"]] == ["ORD-0", "ORD-1", "000123"]


@pytest.mark.parametrize(("max_failed_orders", "task_state"), [(0, "failed"), (1, "success")])
def test_one_invalid_order_in_three(
    kapture_emulator: KaptureEmulator, conn, run_dag, max_failed_orders: int, task_state: str
) -> None:
    conn()
    invalid = order(1)
    invalid["customer_info"]["customer_name"] = "  "
    orders = [order(0), invalid, order(2)]

    result = run_dag(make_dag(orders=orders, max_failed_orders=max_failed_orders))

    assert result.task_states == {TASK_ID: task_state}
    assert result.try_numbers == {TASK_ID: 1}
    assert sorted(kapture_emulator.orders) == ["ORD-0", "ORD-2"]
    assert sent_order_ids(kapture_emulator) == ["ORD-0", "ORD-2"]  # the invalid one never sent
    summary = result.xcom(TASK_ID)  # pushed even when the task fails
    assert (summary["succeeded"], summary["failed"], summary["invalid"]) == (2, 0, 1)
    assert [(o["position"], o["order_id"], o["status"]) for o in summary["orders"]] == [
        (0, "ORD-0", "succeeded"),
        (1, "ORD-1", "invalid"),
        (2, "ORD-2", "succeeded"),
    ]
    assert "customer_info.customer_name" in summary["orders"][1]["error"]
    assert_free_of(json.dumps(summary), *personal_values())


def test_rejected_and_transient_orders(kapture_emulator: KaptureEmulator, conn, run_dag) -> None:
    conn()
    kapture_emulator.script_for_order("ORD-1", *[Fault.FAILED_BODY] * 5)
    kapture_emulator.script_for_order("ORD-2", Fault.HTTP_500)  # once: retried, then stored

    result = run_dag(make_dag(orders=[order(0), order(1), order(2)], max_failed_orders=1))

    assert result.task_states == {TASK_ID: "success"}
    assert sorted(kapture_emulator.orders) == ["ORD-0", "ORD-2"]
    assert sent_order_ids(kapture_emulator) == ["ORD-0", "ORD-1", "ORD-2", "ORD-2"]
    summary = result.xcom(TASK_ID)
    assert (summary["succeeded"], summary["failed"], summary["invalid"]) == (2, 1, 0)
    assert summary["orders"][1]["status"] == "failed"
    assert "Order Updation Failed" in summary["orders"][1]["error"]
    assert summary["orders"][2] == {"position": 2, "order_id": "ORD-2", "status": "succeeded", "error": None}
    assert_free_of(json.dumps(summary), *personal_values())


def test_auth_failure_fails_without_retries(
    kapture_emulator: KaptureEmulator, conn, run_dag, secrets: dict[str, str]
) -> None:
    conn(password="definitely-wrong-password")

    result = run_dag(make_dag(orders=[order(0), order(1), order(2)], retries=2, retry_delay=dt.timedelta(seconds=0)))

    assert result.task_states == {TASK_ID: "failed"}
    assert result.try_numbers == {TASK_ID: 1}
    assert len(kapture_emulator.requests) == 1  # neither the hook nor Airflow retried
    assert kapture_emulator.orders == {}


@console_masks_secrets
def test_secrets_and_personal_data_never_in_logs_or_xcom(
    kapture_emulator: KaptureEmulator, conn, run_dag, secrets: dict[str, str], capfd, caplog
) -> None:
    conn()
    kapture_emulator.script_for_order("ORD-1", *[Fault.HTTP_404] * 5)
    invalid = order(2)
    invalid["order_info"]["order_id"] = "  "

    result = run_dag(make_dag(orders=[order(0), order(1), invalid]))

    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    assert result.task_states == {TASK_ID: "failed"}
    assert "Kapture update: 1 succeeded, 1 failed, 1 invalid" in logs  # the task log was captured
    assert "order_info.order_id" in logs
    assert "2 of 3 orders failed or were invalid" in logs
    summary = json.dumps(result.xcom(TASK_ID))
    assert "ORD-1" in summary
    assert_free_of(logs + summary, secrets["password"], secrets["token"])
    assert_free_of(logs + summary, *personal_values())


@console_masks_secrets
def test_secrets_never_in_logs_on_auth_failure(
    kapture_emulator: KaptureEmulator, conn, run_dag, secrets: dict[str, str], capfd, caplog
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    wrong_token = base64.b64encode(f"{secrets['login']}:{wrong}".encode()).decode("ascii")
    conn(password=wrong)

    result = run_dag(make_dag(orders=[order(0)]))

    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    assert result.task_states == {TASK_ID: "failed"}
    assert "refused the credentials" in logs
    assert result.xcom(TASK_ID) is None
    assert_free_of(logs, wrong, wrong_token, secrets["password"], secrets["token"], *personal_values())


def test_nan_in_one_order_of_a_dag_run_is_reported_invalid(kapture_emulator: KaptureEmulator, conn, run_dag) -> None:
    conn()
    invalid = order(1, associate_fields={"amount": float("nan")})

    result = run_dag(make_dag(orders=[order(0), invalid], max_failed_orders=1))

    assert sorted(kapture_emulator.orders) == ["ORD-0"]
    assert result.task_states == {TASK_ID: "success"}
    summary = result.xcom(TASK_ID)
    assert (summary["succeeded"], summary["invalid"]) == (1, 1)
    assert summary["orders"][1]["status"] == "invalid"
    assert "amount" in summary["orders"][1]["error"] and "finite" in summary["orders"][1]["error"]


# -- execute() with a minimal context: the exception texts ---------------------------------------------------


class RecordingTI:
    """The one part of the task context the operator uses: ``ti.xcom_push``."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def make_operator(**kwargs: Any) -> Any:
    from kapture_provider.operators.update_order import UpdateOrderOperator

    return UpdateOrderOperator(task_id=TASK_ID, kapture_conn_id=CONN_ID, **kwargs)


def test_execute_returns_summary_using_default_connection(kapture_fast_conn: KaptureEmulator) -> None:
    from kapture_provider.operators.update_order import UpdateOrderOperator

    ti = RecordingTI()
    operator = UpdateOrderOperator(task_id=TASK_ID, orders=[order(0), order(1)])  # kapture_default

    summary = operator.execute({"ti": ti})

    assert (summary["succeeded"], summary["failed"], summary["invalid"]) == (2, 0, 0)
    assert sorted(kapture_fast_conn.orders) == ["ORD-0", "ORD-1"]
    assert ti.pushed == {}  # the return value is Airflow's to push


def test_execute_failure_text_and_pushed_summary(
    kapture_emulator: KaptureEmulator, conn, secrets: dict[str, str]
) -> None:
    from kapture_provider.compat import AirflowException

    conn()
    kapture_emulator.script_for_order("ORD-1", *[Fault.HTTP_503] * 5)
    kapture_emulator.configure(retry_after=0)
    invalid = order(2)
    invalid["order_info"]["order_id"] = ""
    ti = RecordingTI()

    with pytest.raises(AirflowException) as caught:
        make_operator(orders=[order(0), order(1), invalid], max_failed_orders=1).execute({"ti": ti})

    text = str(caught.value)
    assert "2 of 3 orders failed or were invalid" in text
    assert "#1 ORD-1" in text
    assert "order_info.order_id" in text
    assert_free_of(text, secrets["password"], secrets["token"], *personal_values())
    summary = ti.pushed["return_value"]
    assert (summary["succeeded"], summary["failed"], summary["invalid"]) == (1, 1, 1)
    assert sent_order_ids(kapture_emulator) == ["ORD-0", "ORD-1", "ORD-1", "ORD-1"]  # 1 + max_retries
    assert_free_of(json.dumps(summary), secrets["password"], secrets["token"], *personal_values())


def test_execute_auth_failure_is_not_retryable(
    kapture_emulator: KaptureEmulator, conn, secrets: dict[str, str]
) -> None:
    from kapture_provider.compat import AirflowFailException

    wrong = f"wrong-{uuid.uuid4().hex}"
    conn(password=wrong)
    ti = RecordingTI()

    with pytest.raises(AirflowFailException) as caught:
        make_operator(orders=[order(0), order(1)]).execute({"ti": ti})

    assert "refused the credentials" in str(caught.value)
    assert_free_of(str(caught.value), wrong, secrets["password"], secrets["token"], *personal_values())
    assert len(kapture_emulator.requests) == 1
    assert kapture_emulator.orders == {}


def test_execute_reports_non_finite_number_invalid(kapture_emulator: KaptureEmulator, conn) -> None:
    conn()
    invalid = order(1, associate_fields={"amount": float("nan")})

    summary = make_operator(orders=[order(0), invalid], max_failed_orders=1).execute({"ti": RecordingTI()})

    assert sent_order_ids(kapture_emulator) == ["ORD-0"]
    assert summary["orders"][1]["status"] == "invalid"
    assert summary["orders"][1]["error"].startswith("order_info.associate_fields.amount:")


def test_unusable_connection_fails_for_good_before_anything_is_sent(kapture_conn_env) -> None:
    from kapture_provider.compat import AirflowFailException

    kapture_conn_env(CONN_ID, host="http://kapture.example.com", login="user", password="s3cret-pass")
    operator = make_operator(orders=order(0))

    with pytest.raises(AirflowFailException, match="allow_insecure_http") as raised:
        operator.execute({"ti": RecordingTI()})
    assert "s3cret-pass" not in str(raised.value)
