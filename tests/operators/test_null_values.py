"""``null_values`` on both operators: the bodies the emulator receives for NULL columns, and the ledger's resend.

Real DAG runs (``dag.test()``) of ``SqlToKaptureOrdersOperator`` over a SQLite warehouse holding NULLs and of
``UpdateOrderOperator`` with ``None`` in its bodies, against the Kapture emulator on loopback (which, like
Kapture, keeps the fields an update leaves out).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pendulum
import pytest

from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator

pytestmark = pytest.mark.unit

TASK_ID = "sync_orders"
WAREHOUSE_CONN_ID = "null_values_warehouse"
SQL = 'SELECT order_id, customer_name, phone, invoice_no, remarks AS "order_info.remarks" FROM orders ORDER BY order_id'


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite warehouse: order 1 has every column, order 2 a NULL phone and remarks."""
    path = tmp_path / "erp.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE orders (order_id TEXT, customer_name TEXT, phone TEXT, invoice_no TEXT, remarks TEXT)"
        )
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
            [("1", "Meera Iyer", "9380491257", "INV-1", "gift wrap"), ("2", "Rohan Das", None, "INV-2", None)],
        )
    conn.close()
    monkeypatch.setenv(f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}", f'{{"conn_type": "sqlite", "host": "{path}"}}')
    return path


def sync_dag(**operator_kwargs: Any) -> Any:
    from kapture_provider.compat import DAG
    from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

    with DAG(
        f"kapture_null_values_{uuid.uuid4().hex[:10]}",
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        default_args={"retries": 0},
    ) as dag:
        SqlToKaptureOrdersOperator(task_id=TASK_ID, sql_conn_id=WAREHOUSE_CONN_ID, sql=SQL, **operator_kwargs)
    return dag


def bodies(emulator: KaptureEmulator, since: int = 0) -> dict[str | None, Any]:
    """Order id → the body of its last add-update request."""
    return {r.order_id: r.body for r in emulator.requests[since:] if r.path == ADD_UPDATE_PATH}


def ledger(path: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT order_id, status, body_hash FROM kapture_order_sync_ledger").fetchall()
    conn.close()
    return {order_id: (status, body_hash) for order_id, status, body_hash in rows}


@pytest.mark.parametrize("policy", [None, "omit", "empty"])
def test_sql_sync_bodies_under_each_policy(
    policy: str | None, warehouse: Path, kapture_conn: KaptureEmulator, run_dag: Callable[..., Any]
) -> None:
    run = run_dag(sync_dag(**({} if policy is None else {"null_values": policy})))

    assert run.task_states == {TASK_ID: "success"}
    sent = bodies(kapture_conn)
    assert sent["1"] == {
        "customer_info": {"customer_name": "Meera Iyer", "phone": "9380491257"},
        "order_info": {"order_id": "1", "remarks": "gift wrap", "invoice_no": "INV-1", "update": True},
    }
    if policy == "empty":
        assert sent["2"] == {
            "customer_info": {"customer_name": "Rohan Das", "phone": ""},
            "order_info": {"order_id": "2", "remarks": "", "invoice_no": "INV-2", "update": True},
        }
    else:  # "omit", the default
        assert sent["2"] == {
            "customer_info": {"customer_name": "Rohan Das"},
            "order_info": {"order_id": "2", "invoice_no": "INV-2", "update": True},
        }


@pytest.mark.parametrize(("policy", "kept"), [("omit", "gift wrap"), ("empty", "")])
def test_a_value_turning_null_is_sent_again_as_the_policy_says(
    policy: str, kept: str, warehouse: Path, kapture_conn: KaptureEmulator, run_dag: Callable[..., Any]
) -> None:
    dag = sync_dag(null_values=policy)
    run_dag(dag)
    first_hash = ledger(warehouse)["1"][1]
    quiet = run_dag(dag).xcom(TASK_ID)  # nothing changed: nothing sent (read now: a later run replaces it)
    with sqlite3.connect(warehouse) as conn:
        conn.execute("UPDATE orders SET remarks = NULL WHERE order_id = '1'")
    conn.close()
    before = len(kapture_conn.requests)

    changed = run_dag(dag).xcom(TASK_ID)

    assert (quiet["requests"], quiet["unchanged"]) == (0, 2)
    assert (changed["succeeded"], changed["unchanged"]) == (1, 1)
    resent = bodies(kapture_conn, since=before)
    assert list(resent) == ["1"]
    assert ("remarks" in resent["1"]["order_info"]) is (policy == "empty")
    assert kapture_conn.orders["1"]["order_info"]["remarks"] == kept  # "omit": Kapture keeps its value
    status, new_hash = ledger(warehouse)["1"]
    assert status == "delivered" and new_hash != first_hash
    assert run_dag(dag).xcom(TASK_ID)["requests"] == 0  # the body sent is what the ledger compares with


def update_dag(orders: Any, **operator_kwargs: Any) -> Any:
    from kapture_provider.compat import DAG
    from kapture_provider.operators.update_order import UpdateOrderOperator

    with DAG(
        f"kapture_update_null_{uuid.uuid4().hex[:10]}",
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    ) as dag:
        UpdateOrderOperator(task_id="update_orders", orders=orders, **operator_kwargs)
    return dag


@pytest.mark.parametrize("policy", ["omit", "empty"])
def test_update_order_bodies_under_each_policy(
    policy: str, kapture_conn: KaptureEmulator, run_dag: Callable[..., Any]
) -> None:
    order = {
        "customer_info": {"customer_name": "Meera Iyer", "email_id": None},
        "order_info": {"order_id": "7", "invoice_no": "INV-7", "remarks": None, "associate_fields": {"gst": None}},
    }

    run = run_dag(update_dag(order, null_values=policy))

    assert run.task_states == {"update_orders": "success"}
    if policy == "omit":
        assert bodies(kapture_conn)["7"] == {
            "customer_info": {"customer_name": "Meera Iyer"},
            "order_info": {"order_id": "7", "invoice_no": "INV-7", "associate_fields": {}},
        }
    else:
        assert bodies(kapture_conn)["7"] == {
            "customer_info": {"customer_name": "Meera Iyer", "email_id": ""},
            "order_info": {"order_id": "7", "invoice_no": "INV-7", "remarks": "", "associate_fields": {"gst": ""}},
        }


@pytest.mark.parametrize("bad", ["skip", "null", ""])
def test_an_unknown_policy_fails_when_the_dag_is_built(bad: str) -> None:
    with pytest.raises(ValueError, match=r"null_values must be 'omit' .* or 'empty' .*got '"):
        sync_dag(null_values=bad)
    with pytest.raises(ValueError, match=r"null_values must be 'omit'"):
        update_dag([], null_values=bad)
