"""SqlToKaptureOrdersOperator end to end: invalid rows, mapping errors, dry runs, bound parameters.

Interval runs go through Airflow (``dag.test(logical_date=T)``, data interval ``[T - 1 h, T)``) with the
example DAG or a DAG built here around the same operator, query and interval parameters; the checks that
need the exception itself call ``execute()`` directly. Kapture is the emulator; the warehouse is SQLite,
or each engine where the SQL differs between them. The ledger's decisions across hourly runs (unchanged,
changed, refused, stale, newest of several changes, killed runs) are checked on every warehouse × ledger
through the ``airflow`` command in ``test_acceptance_cli.py``.
"""

from __future__ import annotations

import datetime as dt
import gc
import time
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from kapture_acceptance_dags import ORDER_CHANGES_DDL, ORDER_CHANGES_SQL

from kapture_provider.compat import DAG, AirflowFailException, CronDataIntervalTimetable
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.testing.warehouse import TIMESTAMP_FORMAT, generate_orders
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

EXAMPLE_TASK_ID = "sync_changed_orders"
TASK_ID = "sync"
DAY = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
NAIVE_DAY = DAY.replace(tzinfo=None)
HOUR = dt.timedelta(hours=1)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def add_updates(emulator: KaptureEmulator, since: int = 0) -> list[Any]:
    """The add-update requests the emulator answered, from position ``since`` on."""
    return [r for r in emulator.requests if r.path == ADD_UPDATE_PATH][since:]


def sync_dag(example_dag: Any, sql: str | None = None, **operator_kwargs: Any) -> Any:
    """A DAG like the example (same timetable, query and interval parameters) without retries."""
    example_task = example_dag.get_task(EXAMPLE_TASK_ID)
    kwargs: dict[str, Any] = {"version_column": "_version", "max_failed_ratio": 0.0, **operator_kwargs}
    with DAG(
        dag_id=f"kapture_sync_test_{uuid.uuid4().hex[:10]}",
        schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
        start_date=DAY - dt.timedelta(days=30),
        catchup=False,
        default_args={"retries": 0},
    ) as dag:
        SqlToKaptureOrdersOperator(
            task_id=TASK_ID,
            sql_conn_id="erp_warehouse",
            sql=example_task.sql if sql is None else sql,
            window_parameters=example_task.window_parameters,
            **kwargs,
        )
    return dag


def timestamp(value: dt.datetime) -> str:
    return value.replace(tzinfo=None).strftime(TIMESTAMP_FORMAT)


def create_order_changes(warehouse: Any, changes: list[tuple[Any, ...]]) -> None:
    """``order_changes`` holds several rows per order: (order_id, name, email, invoice, amount, at, version)."""
    warehouse.execute("DROP TABLE IF EXISTS order_changes")
    warehouse.execute(ORDER_CHANGES_DDL)
    p = warehouse.placeholder
    warehouse.executemany(
        "INSERT INTO order_changes (change_id, order_id, customer_name, email, invoice_no, total_amount, "
        f"updated_at, _version) VALUES ({', '.join([p] * 8)})",
        [(i, *change) for i, change in enumerate(changes, start=1)],
    )


def run_execute(**kwargs: Any) -> dict[str, Any]:
    """Run the operator's ``execute`` directly (no Airflow run) and return its summary."""
    task_id = f"direct_{uuid.uuid4().hex[:6]}"
    operator = SqlToKaptureOrdersOperator(task_id=task_id, sql_conn_id="erp_warehouse", **kwargs)
    return operator.execute({})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# ledger: an old, broken row in a backfill
# --------------------------------------------------------------------------------------------------


def test_backfill_of_an_older_invalid_row_is_stale_not_invalid(
    warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag_at
) -> None:
    def at(minutes: int) -> str:
        return timestamp(DAY + dt.timedelta(minutes=minutes))

    changes = [
        ("00000100", "", "kavya@example.com", "INV-OLD", Decimal("10.00"), at(20), 1),  # no name: invalid
        ("00000100", "Kavya Nair", "kavya.n@example.com", "INV-NEW", Decimal("99.90"), at(80), 2),
    ]
    create_order_changes(warehouse, changes)
    dag = sync_dag(example_dag, ORDER_CHANGES_SQL)
    assert run_dag_at(dag, DAY + 2 * HOUR).state == "success"  # version 2 delivered

    backfill = run_dag_at(dag, DAY + HOUR)  # the broken version 1: older than what Kapture has
    assert backfill.state == "success"
    summary = backfill.xcom(TASK_ID)
    assert (summary["stale"], summary["invalid"], summary["requests"]) == (1, 0, 0)
    assert warehouse.ledger()["00000100"]["status"] == "delivered"

    rerun = run_dag_at(dag, DAY + 2 * HOUR)  # nothing changed: the newer version is not resent
    assert (rerun.xcom(TASK_ID)["unchanged"], rerun.xcom(TASK_ID)["requests"]) == (1, 0)


# --------------------------------------------------------------------------------------------------
# invalid rows and max_failed_ratio
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("max_failed_ratio", "state"), [(0.0, "failed"), (0.01, "success")])
def test_three_invalid_rows_of_a_thousand(
    sqlite_warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag_at, max_failed_ratio: float, state: str
) -> None:
    rows = list(generate_orders(1000, NAIVE_DAY, NAIVE_DAY + HOUR, invalid=3, seed=9))
    sqlite_warehouse.insert_orders(rows)
    invalid_ids = [row[0] for row in rows[:3]]

    outcome = run_dag_at(sync_dag(example_dag, max_failed_ratio=max_failed_ratio), DAY + HOUR)

    assert outcome.state == state
    assert outcome.task_states == {TASK_ID: state}
    # the 997 are delivered whatever the verdict
    assert len(add_updates(kapture_conn)) == 997
    assert set(kapture_conn.orders) == {row[0] for row in rows[3:]}
    summary = outcome.xcom(TASK_ID)  # pushed before the task fails, too
    assert (summary["rows_read"], summary["invalid"], summary["succeeded"], summary["failed"]) == (1000, 3, 997, 0)
    assert summary["failure_ratio"] == pytest.approx(0.003)
    assert [r["order_id"] for r in summary["invalid_rows"]] == invalid_ids
    for problem in summary["invalid_rows"]:
        assert "customer_info.customer_name" in problem["error"]
        assert "mandatory" in problem["error"]
    ledger = sqlite_warehouse.ledger()
    assert Counter(entry["status"] for entry in ledger.values()) == Counter({"delivered": 997, "invalid": 3})
    for order_id in invalid_ids:
        assert ledger[order_id]["status"] == "invalid"
        assert "customer_info.customer_name" in ledger[order_id]["last_error"]
        assert ledger[order_id]["pending_body"] is None  # an invalid row is never retried as such


# --------------------------------------------------------------------------------------------------
# mapping errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param(
            "SELECT order_id, customer_name, city AS remarks FROM erp_orders",
            ["'remarks'", "'customer_info.remarks'", "'enquiry_info.remarks'", "'order_info.remarks'"],
            id="ambiguous",
        ),
        pytest.param(
            "SELECT order_id, customer_name, city AS colour FROM erp_orders",
            ["'colour'", "not a Kapture order field", "'order_info.associate_fields.colour'"],
            id="unknown",
        ),
        pytest.param(
            "SELECT customer_name, invoice_no FROM erp_orders",
            ["order_info.order_id", "mandatory", "'order_id'"],
            id="no-order-id",
        ),
    ],
)
def test_mapping_errors_are_clear_and_raised_before_any_request(
    sqlite_warehouse, kapture_conn: KaptureEmulator, sql: str, expected: list[str]
) -> None:
    sqlite_warehouse.insert_orders(list(generate_orders(20, NAIVE_DAY, NAIVE_DAY + HOUR)))

    with pytest.raises(AirflowFailException) as caught:
        run_execute(sql=sql)

    for text in expected:
        assert text in str(caught.value)
    assert kapture_conn.requests == []
    assert not sqlite_warehouse.table_exists("kapture_order_sync_ledger")


def test_mapping_error_fails_the_task_without_retries(
    sqlite_warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag_at
) -> None:
    sqlite_warehouse.insert_orders(list(generate_orders(20, NAIVE_DAY, NAIVE_DAY + HOUR)))
    dag = sync_dag(example_dag, "SELECT order_id, customer_name, city AS remarks FROM erp_orders", version_column=None)
    dag.default_args["retries"] = 2
    for task in dag.tasks:
        task.retries, task.retry_delay = 2, dt.timedelta(seconds=1)

    outcome = run_dag_at(dag, DAY + HOUR)

    assert outcome.state == "failed"
    ti = outcome.dag_run.get_task_instances()[0]
    assert ti.try_number == 1  # AirflowFailException: no retry could fix the mapping
    assert kapture_conn.requests == []


# --------------------------------------------------------------------------------------------------
# dry run
# --------------------------------------------------------------------------------------------------


def test_dry_run_reports_and_sends_and_records_nothing(
    sqlite_warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag_at
) -> None:
    rows = list(generate_orders(50, NAIVE_DAY, NAIVE_DAY + HOUR, seed=13))
    sqlite_warehouse.insert_orders(rows)
    dry = sync_dag(example_dag, dry_run=True)

    fresh = run_dag_at(dry, DAY + HOUR)  # no ledger yet: everything would be sent, nothing is created
    assert fresh.state == "success"
    summary = fresh.xcom(TASK_ID)
    assert (summary["dry_run"], summary["rows_read"], summary["to_send"], summary["requests"]) == (True, 50, 50, 0)
    assert (summary["succeeded"], summary["failed"]) == (0, 0)
    assert kapture_conn.requests == []
    assert not sqlite_warehouse.table_exists("kapture_order_sync_ledger")

    refused = rows[7][0]
    kapture_conn.script_for_order(refused, "failed-body")
    real = run_dag_at(sync_dag(example_dag, max_failed_ratio=1.0), DAY + HOUR)
    assert real.state == "success"
    assert len(add_updates(kapture_conn)) == 50
    for row in rows[:5]:
        sqlite_warehouse.execute("UPDATE erp_orders SET payment_mode = 'Card (EMI)' WHERE order_id = ?", (row[0],))
    new_rows = list(generate_orders(3, NAIVE_DAY, NAIVE_DAY + HOUR, seed=14, first_id=99_000_000))
    sqlite_warehouse.insert_orders(new_rows)
    ledger_before = sqlite_warehouse.ledger()
    assert ledger_before[refused]["status"] == "failed"

    again = run_dag_at(dry, DAY + HOUR)

    assert again.state == "success"
    summary = again.xcom(TASK_ID)
    # 5 changed + 3 new + the refused one still owed (its row is read again) would be sent
    assert (summary["rows_read"], summary["unchanged"], summary["to_send"]) == (53, 44, 9)
    assert (summary["retried"], summary["requests"], summary["succeeded"], summary["failed"]) == (0, 0, 0, 0)
    assert len(add_updates(kapture_conn)) == 50
    assert sqlite_warehouse.ledger() == ledger_before


# --------------------------------------------------------------------------------------------------
# parameters are bound, never formatted into the SQL
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("placeholder", [":order_id", "%(order_id)s"])
def test_parameters_stay_bound(any_warehouse, kapture_conn: KaptureEmulator, placeholder: str) -> None:
    rows = list(generate_orders(30, NAIVE_DAY, NAIVE_DAY + HOUR, seed=17))
    any_warehouse.insert_orders(rows)
    sql = (
        "SELECT order_id, customer_name, invoice_no, updated_at AS _version FROM erp_orders "
        f"WHERE order_id = {placeholder}"
    )

    for hostile in ("'; DROP TABLE erp_orders; --", "x' OR '1'='1"):
        summary = run_execute(sql=sql, parameters={"order_id": hostile}, version_column="_version")
        assert (summary["rows_read"], summary["requests"]) == (0, 0)
    assert kapture_conn.requests == []
    assert any_warehouse.query("SELECT COUNT(*) FROM erp_orders") == [(30,)]

    # the same query with a real order id selects exactly that order
    summary = run_execute(sql=sql, parameters={"order_id": rows[4][0]}, version_column="_version")
    assert (summary["rows_read"], summary["succeeded"]) == (1, 1)
    assert [r.order_id for r in add_updates(kapture_conn)] == [rows[4][0]]


def test_literal_percent_in_a_query_without_parameters(any_warehouse, kapture_conn: KaptureEmulator) -> None:
    """A LIKE pattern is no placeholder: without parameters the SQL reaches the driver as written."""
    rows = list(generate_orders(40, NAIVE_DAY, NAIVE_DAY + HOUR, seed=19))
    any_warehouse.insert_orders(rows)
    sql = (
        "SELECT order_id, customer_name, city, updated_at AS _version FROM erp_orders "
        "WHERE city LIKE 'P%' AND email LIKE '%@example.com'"
    )

    summary = run_execute(sql=sql, version_column="_version")

    expected = {row[0] for row in rows if row[4].startswith("P")}
    assert expected and len(expected) < len(rows)
    assert (summary["rows_read"], summary["succeeded"]) == (len(expected), len(expected))
    assert set(kapture_conn.orders) == expected


# --------------------------------------------------------------------------------------------------
# the first requests leave while the rest of the first chunk is mapped
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frozen_before", [False, True], ids=["heap-not-frozen", "heap-frozen-by-the-executor"])
def test_objects_older_than_the_run_are_frozen_while_it_lasts(
    kapture_conn: KaptureEmulator, frozen_before: bool
) -> None:
    """The garbage collector's full collections skip the objects that existed before the run (a collection over
    Airflow's heap stops every sending thread): frozen during the run, unfrozen after it, unless an executor
    had frozen them before; what the run creates is still collected."""
    from kapture_provider.hooks.kapture import KaptureHook
    from kapture_provider.sync.engine import OrderSync

    frozen_during: list[int] = []
    if frozen_before:
        gc.freeze()
    frozen_at_start = gc.get_freeze_count()
    hook = KaptureHook(max_requests_per_second=None)
    try:
        summary = OrderSync(hook, None, max_concurrency=2).run(
            ["order_id", "customer_name"],
            [[("F-1", "Customer 1"), ("F-2", "Customer 2")]],
            row_mapper=lambda row: frozen_during.append(gc.get_freeze_count()) or {},
        )
        frozen_after = gc.get_freeze_count()
    finally:
        hook.close()
        gc.unfreeze()

    assert summary.succeeded == 2 and set(kapture_conn.orders) == {"F-1", "F-2"}
    assert min(frozen_during) > frozen_at_start
    assert (frozen_after > 0) is frozen_before


@pytest.mark.parametrize("duplicate", [False, True], ids=["distinct-orders", "an-order-twice"])
def test_first_requests_leave_before_the_whole_chunk_is_mapped(kapture_conn: KaptureEmulator, duplicate: bool) -> None:
    """A chunk of distinct orders is decided in growing pieces: requests for the first ones are under way
    before its last row is mapped. A chunk holding one order twice is mapped whole first (the newer row
    of an order wins within a chunk), so nothing is sent before its last row is mapped."""
    from kapture_provider.hooks.kapture import KaptureHook
    from kapture_provider.sync.engine import OrderSync

    rows = [(f"P-{n}", f"Customer {n}") for n in range(300)]
    if duplicate:
        rows[150] = ("P-7", "Customer 7, again")
    last = rows[-1][0]
    seen_at_last_row: list[int] = []

    def note_requests_at_the_last_row(row: dict[str, Any]) -> dict[str, Any]:
        if row["order_id"] == last:
            deadline = time.monotonic() + 10  # the first piece is queued already: wait for its sending threads
            while not duplicate and not add_updates(kapture_conn) and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_at_last_row.append(len(add_updates(kapture_conn)))
        return {}

    hook = KaptureHook(max_requests_per_second=None)
    try:
        summary = OrderSync(hook, None, max_concurrency=4).run(
            ["order_id", "customer_name"], [rows], row_mapper=note_requests_at_the_last_row
        )
    finally:
        hook.close()

    assert (seen_at_last_row[0] > 0) is not duplicate
    assert summary.succeeded == len({order_id for order_id, _ in rows})
    assert kapture_conn.orders["P-7"]["customer_info"]["customer_name"] == (
        "Customer 7, again" if duplicate else "Customer 7"
    )
