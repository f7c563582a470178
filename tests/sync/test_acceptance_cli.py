"""The sync acceptance suite on every warehouse × ledger, through the real ``airflow dags test`` command.

Combinations: SQLite, PostgreSQL, MariaDB and DuckDB each holding their own ledger, and a MariaDB
warehouse whose ledger is in PostgreSQL (``ledger_conn_id``). Each runs one sequence of hourly runs
(``[T - 1 h, T)`` for a run at ``T``) — of the example DAG file itself where the ledger is the
warehouse, and of ``cli_dags/kapture_acceptance*`` (the example's sync of ``erp_orders``, a sync of
``order_changes`` with several rows per order, or both) — checking at each step what Kapture (the
emulator) stored, what the ledger holds and what each task returned:

1. ``[01:00, 02:00)``: interval boundaries; a refused order recorded with its body pending; several
   changes of one order in the run → only the newest is sent;
2. ``[02:00, 03:00)``, SIGKILLed mid-way, then run again: every order delivered, at most
   ``max_concurrency`` twice, and the order refused by the earlier interval delivered by this one;
3. ``[01:00, 02:00)`` again: nothing changed → 0 requests;
4. one order changed, same interval → exactly 1 request;
5. ``[00:00, 01:00)``, a backfill: the older version of an order already sent newer is ``stale``.

Every ``airflow dags test`` costs seconds of Airflow start-up per task, so one sequence covers all.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
import signal
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kapture_acceptance_dags import ORDER_CHANGES_DDL

from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.testing.warehouse import TIMESTAMP_FORMAT, generate_orders
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

pytestmark = pytest.mark.system

DAY = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
ACCEPTANCE, EXAMPLE = "kapture_acceptance", "kapture_erp_order_sync"
ORDERS, CHANGES = "kapture_acceptance_orders", "kapture_acceptance_changes"
CHANGES_LEDGER = "kapture_changes_ledger"
COMBINATIONS = [
    pytest.param(("sqlite", None), id="sqlite"),
    pytest.param(("postgres", None), id="postgres"),
    pytest.param(("mariadb", None), id="mariadb"),
    pytest.param(("duckdb", None), id="duckdb"),
    pytest.param(("mariadb", "postgres"), id="mariadb-warehouse-postgres-ledger"),
]


def at(minutes: int) -> str:
    return (DAY + dt.timedelta(minutes=minutes)).replace(tzinfo=None).strftime(TIMESTAMP_FORMAT)


def order_row(order_id: str, minutes: int) -> tuple[Any, ...]:
    return (
        order_id, "Meera Iyer", "9380491257", f"{order_id}@example.com", "Pune", f"INV-{order_id}", "2026-11-20",
        "Placed", "UPI", Decimal("1234.50"), at(minutes),
    )  # fmt: skip


def sent(emulator: KaptureEmulator, since: int = 0) -> list[str]:
    return [r.order_id for r in emulator.requests if r.path == ADD_UPDATE_PATH][since:]


@pytest.fixture
def combination(request: pytest.FixtureRequest) -> Any:
    """``(warehouse, ledger database, CLI environment)`` for one warehouse × ledger combination."""
    warehouse_kind, ledger_kind = request.param
    warehouse = request.getfixturevalue(f"{warehouse_kind}_warehouse")
    warehouse.execute(warehouse.ddl(ORDER_CHANGES_DDL))
    if ledger_kind is None:
        return warehouse, warehouse, {}
    assert ledger_kind == "postgres"
    ledger = request.getfixturevalue("postgres_ledger")
    return warehouse, ledger, {"KAPTURE_TEST_LEDGER_CONN_ID": ledger.conn_id}


@pytest.mark.parametrize("combination", COMBINATIONS, indirect=True)
def test_hourly_runs_deliver_each_change_once(
    combination: Any, kapture_fast_conn: KaptureEmulator, airflow_cli: Any, tmp_path: Path
) -> None:
    warehouse, ledger, env = combination
    kapture = kapture_fast_conn
    orders_dag, orders_task = (ORDERS, "sync_orders") if env else (EXAMPLE, "sync_changed_orders")
    # the most requests in flight: the acceptance DAGs set 8, the example DAG keeps the default ceiling
    in_flight = 8 if env else inspect.signature(SqlToKaptureOrdersOperator).parameters["max_concurrency"].default
    boundary = [order_row("00000001", 59), order_row("00000002", 60), order_row("00000003", 119),
                order_row("00000004", 120), order_row("00000005", 150)]  # fmt: skip
    naive_day = DAY.replace(tzinfo=None)
    hour_2 = list(generate_orders(150, naive_day + HOUR, naive_day + 2 * HOUR, seed=5))
    hour_3 = list(generate_orders(600, naive_day + 2 * HOUR, naive_day + 3 * HOUR, seed=21, first_id=50_000_000))
    warehouse.insert_orders(boundary + hour_2 + hour_3)
    refused = hour_2[40][0]
    kapture.script_for_order(refused, "failed-body")
    changes = [
        ("00000100", "Kavya Nair", "kavya@example.com", "INV-OLD", Decimal("10.00"), at(20), 1),
        ("00000200", "Rohan Das", "rohan@example.com", "INV-200", Decimal("75.25"), at(30), 1),
        ("00000100", "Kavya Nair", "kavya.n@example.com", "INV-NEW", Decimal("99.90"), at(80), 2),
        ("00000300", "Arjun Menon", "arjun1@example.com", "INV-1", Decimal("10.00"), at(65), 1),
        ("00000300", "Arjun Menon", "arjun3@example.com", "INV-3", Decimal("30.75"), at(75), 3),
        ("00000300", "Arjun Menon", "arjun2@example.com", "INV-2", Decimal("20.50"), at(105), 2),
    ]  # order 300's newest version is neither its first nor its last row
    p = warehouse.placeholder
    warehouse.executemany(
        "INSERT INTO order_changes (change_id, order_id, customer_name, email, invoice_no, total_amount, "
        f"updated_at, _version) VALUES ({', '.join([p] * 8)})",
        [(i, *change) for i, change in enumerate(changes, start=1)],
    )

    # 1. [01:00, 02:00): the boundaries, a refusal, several changes of one order
    first = airflow_cli(ACCEPTANCE, DAY + 2 * HOUR, env)
    assert first.state == "success", first.output[-4000:]
    orders, order_changes = first.summary("sync_orders"), first.summary("sync_changes")
    assert (orders["rows_read"], orders["succeeded"], orders["failed"]) == (152, 151, 1)
    assert [f["order_id"] for f in orders["failed_orders"]] == [refused]
    assert (order_changes["rows_read"], order_changes["duplicates"], order_changes["succeeded"]) == (4, 2, 2)
    expected = {"00000002", "00000003", "00000100", "00000300"} | {r[0] for r in hour_2} - {refused}
    assert Counter(sent(kapture)) == Counter({**dict.fromkeys(expected, 1), refused: 1})
    assert set(kapture.orders) == expected
    assert kapture.orders["00000300"]["order_info"]["invoice_no"] == "INV-3"
    assert kapture.orders["00000100"]["order_info"]["invoice_no"] == "INV-NEW"
    entry = ledger.ledger()[refused]
    assert (entry["status"], entry["body_hash"]) == ("failed", None)
    assert entry["pending_body"] and "Order Updation Failed" in entry["last_error"]
    assert entry["failing_since"] == entry["last_attempt_at"]

    # 2. [02:00, 03:00), killed mid-way, then again: nothing lost, at most max_concurrency sent twice, and
    #    the order refused by the earlier interval delivered by this one
    kapture.configure(latency=0.05)  # 160 orders/s or more: the run lasts a few seconds
    requests_before = len(sent(kapture))
    killed = airflow_cli.start(orders_dag, DAY + 3 * HOUR, tmp_path / "killed.log", env)
    try:
        give_up = time.monotonic() + 240  # a safety net against a hang, not a timing assertion
        while len(kapture.orders) < len(expected) + 120:
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
            assert time.monotonic() < give_up, "the run sent too few requests"
            time.sleep(0.01)
        os.killpg(killed.pid, signal.SIGKILL)
    finally:
        killed.wait()
    hour_3_ids = {r[0] for r in hour_3} | {"00000004", "00000005"}
    delivered_before = set(kapture.orders) & hour_3_ids
    assert 120 <= len(delivered_before) < len(hour_3_ids)
    recorded = {k for k, v in ledger.ledger().items() if v["status"] == "delivered"} & hour_3_ids
    assert recorded <= delivered_before  # the ledger never claims what Kapture does not have
    assert len(delivered_before - recorded) <= in_flight  # only the requests in flight are unknown
    kapture.configure(latency=0.0)

    resumed = airflow_cli(orders_dag, DAY + 3 * HOUR, env)

    assert resumed.state == "success", resumed.output[-4000:]
    orders = resumed.summary(orders_task)
    assert (orders["rows_read"], orders["unchanged"], orders["retried"]) == (602, len(recorded), 1)
    assert orders["succeeded"] == orders["requests"] == 602 - len(recorded) + 1
    assert set(kapture.orders) == expected | hour_3_ids | {refused}
    repeated = {k for k, count in Counter(sent(kapture, since=requests_before)).items() if count > 1}
    assert len(repeated) <= in_flight and repeated <= delivered_before - recorded
    assert kapture.orders[refused]["order_info"]["invoice_no"] == hour_2[40][5]
    entry = ledger.ledger()[refused]
    assert (entry["status"], entry["pending_body"], entry["failing_since"], entry["attempts"]) == (
        "delivered",
        None,
        None,
        2,
    )
    requests_so_far = len(sent(kapture))

    # 3. [01:00, 02:00) again: nothing changed, nothing sent
    third = airflow_cli(orders_dag, DAY + 2 * HOUR, env)
    assert third.state == "success", third.output[-4000:]
    assert (third.summary(orders_task)["unchanged"], third.summary(orders_task)["requests"]) == (152, 0)
    assert len(sent(kapture)) == requests_so_far

    # 4. one order changed in that interval: exactly one request
    changed = hour_2[57][0]
    warehouse.execute(f"UPDATE erp_orders SET city = 'Kochi' WHERE order_id = {p}", (changed,))
    fourth = airflow_cli(orders_dag, DAY + 2 * HOUR, env)
    assert fourth.state == "success", fourth.output[-4000:]
    orders = fourth.summary(orders_task)
    assert (orders["unchanged"], orders["succeeded"], orders["requests"]) == (151, 1, 1)
    assert sent(kapture, since=requests_so_far) == [changed]
    assert kapture.orders[changed]["customer_info"]["city"] == "Kochi"

    # 5. [00:00, 01:00), a backfill: order 100's older version is stale, order 200 is new
    fifth = airflow_cli(CHANGES, DAY + HOUR, env)
    assert fifth.state == "success", fifth.output[-4000:]
    order_changes = fifth.summary("sync_changes")
    assert (order_changes["rows_read"], order_changes["stale"], order_changes["succeeded"]) == (2, 1, 1)
    assert sent(kapture, since=requests_so_far + 1) == ["00000200"]
    assert kapture.orders["00000100"]["order_info"]["invoice_no"] == "INV-NEW"
    changes_ledger = ledger.ledger(CHANGES_LEDGER)
    assert {k: (v["status"], v["version"]) for k, v in changes_ledger.items()} == {
        "00000100": ("delivered", "n:2"),
        "00000200": ("delivered", "n:1"),
        "00000300": ("delivered", "n:3"),
    }
