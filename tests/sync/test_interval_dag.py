"""The example hourly DAG and the nightly full-table diff DAG (``dags/``, loaded from their files) run through Airflow.

Runs are made in-process with ``dag.test(logical_date=T)``; for the hourly DAG's ``CronDataIntervalTimetable``
a manual run at ``T`` covers the data interval ``[T - 1 h, T)``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.testing.warehouse import ERP_ORDER_COLUMNS, TIMESTAMP_FORMAT, generate_orders

TASK_ID = "sync_changed_orders"
DAY = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
SUMMARY_KEYS = {
    "rows_read", "invalid", "unchanged", "stale", "succeeded", "failed", "requests", "duration_seconds",
    "orders_per_second", "failed_orders", "invalid_rows",
}  # fmt: skip


def add_update_requests(emulator: KaptureEmulator) -> list[Any]:
    return [r for r in emulator.requests if r.path == ADD_UPDATE_PATH]


def requests_per_order(emulator: KaptureEmulator) -> Counter[str]:
    return Counter(r.order_id for r in add_update_requests(emulator))


def order_row(order_id: str, updated_at: dt.datetime, name: str = "Meera Iyer") -> tuple[Any, ...]:
    return (
        order_id, name, "9380491257", f"{order_id}@example.com", "Pune", f"INV-{order_id}", "2026-11-20",
        "Placed", "UPI", Decimal("1234.50"), updated_at.strftime(TIMESTAMP_FORMAT),
    )  # fmt: skip


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def naive(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=None)


def assert_body_matches_row(body: dict[str, Any], row: tuple[Any, ...]) -> None:
    """The stored Kapture body carries exactly the warehouse row's values, and no control column."""
    values = dict(zip(ERP_ORDER_COLUMNS, row, strict=True))
    customer, order = body["customer_info"], body["order_info"]
    assert order["order_id"] == values["order_id"]
    assert customer["customer_name"] == values["customer_name"]
    assert customer["phone"] == values["phone"]
    assert customer["email_id"] == values["email"]
    assert customer["city"] == values["city"]
    assert order["invoice_no"] == values["invoice_no"]
    assert order["invoice_date"] == values["invoice_date"]
    assert order["delivery_status"] == values["delivery_status"]
    assert order["payment_mode"] == values["payment_mode"]
    amount = order["associate_fields"]["total_amount"]
    assert isinstance(amount, int | float) and not isinstance(amount, bool)
    assert Decimal(str(amount)) == values["total_amount"]
    assert order["update"] is True
    assert "_version" not in str(body) and "updated_at" not in str(body)


def test_consecutive_intervals_deliver_every_order_once(
    warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag_at
) -> None:
    """600 orders over three hours (one invalid), three hourly runs: each valid order sent once, exactly."""
    rows = list(generate_orders(600, naive(DAY), naive(DAY) + dt.timedelta(hours=3), invalid=1, seed=11))
    warehouse.insert_orders(rows)
    by_id = {row[0]: row for row in rows}
    invalid_id = rows[0][0]

    for hour in (1, 2, 3):
        start, end = naive(DAY) + dt.timedelta(hours=hour - 1), naive(DAY) + dt.timedelta(hours=hour)
        in_interval = [r for r in rows if start.strftime(TIMESTAMP_FORMAT) <= r[10] < end.strftime(TIMESTAMP_FORMAT)]
        invalid = [r for r in in_interval if r[0] == invalid_id]
        before = len(add_update_requests(kapture_conn))

        outcome = run_dag_at(example_dag, DAY + dt.timedelta(hours=hour))

        assert outcome.state == "success", outcome.task_states
        summary = outcome.xcom(TASK_ID)
        assert set(summary) >= SUMMARY_KEYS
        delivered = len(in_interval) - len(invalid)
        assert {k: summary[k] for k in ("rows_read", "invalid", "unchanged", "stale", "succeeded", "failed")} == {
            "rows_read": len(in_interval),
            "invalid": len(invalid),
            "unchanged": 0,
            "stale": 0,
            "succeeded": delivered,
            "failed": 0,
        }
        assert summary["requests"] == delivered == len(add_update_requests(kapture_conn)) - before
        assert summary["dry_run"] is False
        assert isinstance(summary["duration_seconds"], float) and summary["duration_seconds"] > 0
        assert summary["orders_per_second"] == pytest.approx(delivered / summary["duration_seconds"], rel=0.05)
        assert [r["order_id"] for r in summary["invalid_rows"]] == [r[0] for r in invalid]
        assert all("customer_info.customer_name" in r["error"] for r in summary["invalid_rows"])

    per_order = requests_per_order(kapture_conn)
    assert set(per_order.values()) == {1}
    assert set(per_order) == set(by_id) - {invalid_id}
    stored = kapture_conn.orders
    assert set(stored) == set(by_id) - {invalid_id}
    for order_id, body in stored.items():
        assert_body_matches_row(body, by_id[order_id])
    ledger = warehouse.ledger()
    assert Counter(v["status"] for v in ledger.values()) == Counter({"delivered": 599, "invalid": 1})
    assert "customer_info.customer_name" in ledger[invalid_id]["last_error"]


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_full_table_diff_sends_only_the_changed_orders(
    kind: str, request: pytest.FixtureRequest, kapture_conn: KaptureEmulator, full_diff_dag, run_dag_at
) -> None:
    """The nightly example DAG reads the whole table; after the first run, only changed orders are sent."""
    warehouse = request.getfixturevalue(f"{kind}_warehouse")
    rows = list(generate_orders(300, naive(DAY), naive(DAY) + dt.timedelta(days=20), seed=23))
    warehouse.insert_orders(rows)
    dag = full_diff_dag

    first = run_dag_at(dag, DAY)
    assert first.state == "success", first.task_states
    assert (first.xcom(TASK_ID)["rows_read"], first.xcom(TASK_ID)["succeeded"]) == (300, 300)

    changed = [rows[7][0], rows[250][0]]
    p = warehouse.placeholder
    for order_id in changed:
        warehouse.execute(
            f"UPDATE erp_orders SET delivery_status = 'Returned to seller' WHERE order_id = {p}", (order_id,)
        )
    second = run_dag_at(dag, DAY + dt.timedelta(days=1))

    assert second.state == "success", second.task_states
    summary = second.xcom(TASK_ID)
    assert (summary["rows_read"], summary["unchanged"], summary["succeeded"], summary["requests"]) == (300, 298, 2, 2)
    assert sorted(r.order_id for r in add_update_requests(kapture_conn)[300:]) == sorted(changed)
    for order_id in changed:
        assert kapture_conn.orders[order_id]["order_info"]["delivery_status"] == "Returned to seller"
    assert len(kapture_conn.orders) == 300
