"""Which rows a run reads, what it says about it, and when it updates the asset.

The example DAG (``dags/kapture_erp_order_sync.py``) binds its query's ``:start``/``:end`` to the run's
window: the ``window_start``/``window_end`` params, else the data interval, else — a run without a
logical date — from where the last successful sync stopped. Runs go through ``dag.test()``.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import Counter
from typing import Any

import pytest
from test_interval_dag import order_row

from kapture_provider.compat import AIRFLOW_V_3_0_PLUS, DAG
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.sync.engine import OrderSync
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

TASK_ID = "sync_changed_orders"
DAY = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
runs_without_logical_date = pytest.mark.skipif(
    not AIRFLOW_V_3_0_PLUS, reason="runs without a logical date exist from Airflow 3.0 on"
)


def sent_ids(emulator: KaptureEmulator) -> Counter[str]:
    return Counter(r.order_id for r in emulator.requests if r.path == ADD_UPDATE_PATH)


def asset_event_tables() -> tuple[Any, Any, Any]:
    """Airflow's asset event and asset tables, and the event's asset column (Airflow 2 calls them datasets)."""
    if AIRFLOW_V_3_0_PLUS:
        from airflow.models.asset import AssetEvent, AssetModel

        return AssetEvent, AssetModel, AssetEvent.asset_id
    from airflow.models.dataset import DatasetEvent, DatasetModel  # pragma: no cover - Airflow 2

    return DatasetEvent, DatasetModel, DatasetEvent.dataset_id  # pragma: no cover - Airflow 2


def latest_asset_event_id() -> int:
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    event_table, _, _ = asset_event_tables()
    with create_session() as session:
        return session.scalar(select(func.max(event_table.id))) or 0


def asset_events(*runs: Any, after: int) -> list[dict[str, Any]]:
    """The ``extra`` of each event these runs emitted for the example asset after event ``after``, oldest first.

    (A later run at the same logical date reuses a run id, so the run ids alone do not tell.)
    """
    from airflow.utils.session import create_session
    from kapture_erp_orders import KAPTURE_ORDERS
    from sqlalchemy import select

    AssetEvent, AssetModel, asset_id = asset_event_tables()
    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == asset_id)
            .where(AssetModel.uri == KAPTURE_ORDERS.uri)  # Airflow 2 normalises it to kapture://orders/
            .where(AssetEvent.source_run_id.in_([run.dag_run.run_id for run in runs]))
            .where(AssetEvent.id > after)
            .order_by(AssetEvent.id)
        )
        return [dict(event.extra or {}) for event in events]


def test_window_params_sync_the_chosen_window(sqlite_warehouse, kapture_conn, example_dag, run_dag) -> None:
    """A manual run with window_start/window_end reads that window, not its data interval."""
    sqlite_warehouse.insert_orders(
        [order_row(f"0000000{h}", DAY + h * HOUR + dt.timedelta(minutes=30)) for h in range(1, 5)]
    )
    conf = {"window_start": "2026-11-26T02:00:00Z", "window_end": "2026-11-26T04:00:00+00:00"}

    outcome = run_dag(example_dag, DAY + 2 * HOUR, conf=conf)  # its data interval is [01:00, 02:00)

    assert outcome.state == "success", outcome.task_states
    assert sent_ids(kapture_conn) == Counter({"00000002": 1, "00000003": 1})
    summary = outcome.xcom(TASK_ID)
    assert summary["window"] == {
        "start": "2026-11-26T02:00:00+00:00",
        "end": "2026-11-26T04:00:00+00:00",
        "source": "the run's window params",
    }


def test_half_a_window_is_refused_before_reading(sqlite_warehouse, kapture_conn, example_dag, run_dag) -> None:
    sqlite_warehouse.insert_orders([order_row("00000001", DAY + HOUR)])

    outcome = run_dag(example_dag, DAY + 2 * HOUR, conf={"window_start": "2026-11-26T01:00:00Z"})

    assert outcome.task_states[TASK_ID] == "failed"
    assert sent_ids(kapture_conn) == Counter()


@runs_without_logical_date
def test_run_without_logical_date_carries_on_from_the_last_successful_sync(
    warehouse, kapture_conn, example_dag, run_dag, capfd
) -> None:
    """Scheduled [01:00, 02:00), then two runs with no logical date: each reads from where the last one ended."""
    warehouse.insert_orders([order_row("00000001", DAY + 90 * dt.timedelta(minutes=1))])  # 01:30
    scheduled = run_dag(example_dag, DAY + 2 * HOUR)
    assert scheduled.state == "success", scheduled.task_states
    assert sent_ids(kapture_conn) == Counter({"00000001": 1})
    warehouse.insert_orders(
        [
            order_row("00000002", DAY + 150 * dt.timedelta(minutes=1)),  # 02:30: after the synced window
            order_row("00000003", DAY + 100 * dt.timedelta(minutes=1)),  # 01:40: inside it (arrived late)
        ]
    )

    first = run_dag(example_dag)  # no logical date

    assert first.state == "success", first.task_states
    assert first.dag_run.logical_date is None
    assert sent_ids(kapture_conn) == Counter({"00000001": 1, "00000002": 1})
    summary = first.xcom(TASK_ID)
    first_end = summary["window"]["end"]
    assert summary["rows_read"] == 1
    assert summary["window"]["start"] == "2026-11-26T02:00:00+00:00"
    assert summary["window"]["source"] == "a run without a logical date: since the last successful sync"
    assert "Kapture sync of [2026-11-26 02:00:00, " in capfd.readouterr().out

    second = run_dag(example_dag)
    assert second.state == "success", second.task_states
    summary = second.xcom(TASK_ID)
    assert summary["window"]["start"] == first_end
    assert (summary["rows_read"], summary["requests"]) == (0, 0)


@runs_without_logical_date
def test_a_manual_window_does_not_move_where_a_run_without_logical_date_starts(
    warehouse, kapture_conn, example_dag, run_dag
) -> None:
    """Scheduled [01:00, 02:00), then a manual window [04:00, 05:00): 02:00–04:00 is still to sync."""
    assert run_dag(example_dag, DAY + 2 * HOUR).state == "success"
    warehouse.insert_orders(
        [
            order_row("00000003", DAY + 3 * HOUR),  # in the gap between the two windows
            order_row("00000004", DAY + 4 * HOUR + dt.timedelta(minutes=30)),  # in the manual window
        ]
    )
    manual = run_dag(
        example_dag, DAY + 3 * HOUR, conf={"window_start": "2026-11-26T04:00:00Z", "window_end": "2026-11-26T05:00:00Z"}
    )
    assert manual.state == "success", manual.task_states
    assert sent_ids(kapture_conn) == Counter({"00000004": 1})

    # no logical date; the params unset explicitly: in-process dag.test() leaves the last conf on the DAG
    after = run_dag(example_dag, conf={"window_start": None, "window_end": None})

    assert after.state == "success", after.task_states
    assert after.xcom(TASK_ID)["window"]["start"] == "2026-11-26T02:00:00+00:00"
    assert sent_ids(kapture_conn) == Counter({"00000003": 1, "00000004": 1})  # 00000004 unchanged: not resent


@runs_without_logical_date
def test_first_run_without_logical_date_starts_at_the_dag_start_date(
    sqlite_warehouse, kapture_conn, example_dag, run_dag
) -> None:
    sqlite_warehouse.insert_orders([order_row(f"0000000{h}", DAY + h * HOUR) for h in range(1, 4)])

    outcome = run_dag(example_dag)

    assert outcome.state == "success", outcome.task_states
    assert set(sent_ids(kapture_conn)) == {"00000001", "00000002", "00000003"}
    window = outcome.xcom(TASK_ID)["window"]
    assert window["start"] == example_dag.start_date.isoformat()
    assert window["source"] == "a run without a logical date: first sync, since the DAG's start_date"


def test_first_log_line_names_the_window_and_the_query_parameters(
    sqlite_warehouse, kapture_conn, example_dag, run_dag, capfd
) -> None:
    outcome = run_dag(example_dag, DAY + 2 * HOUR)

    assert outcome.state == "success", outcome.task_states
    ours = [line for line in capfd.readouterr().out.splitlines() if "Kapture sync" in line]
    assert "Kapture sync of [2026-11-26 01:00:00, 2026-11-26 02:00:00) UTC (the run's data interval); " in ours[0]
    assert "query parameters: {'start': '2026-11-26 01:00:00', 'end': '2026-11-26 02:00:00'}" in ours[0]
    assert len([line for line in ours if "Kapture sync summary" in line]) == 1


def test_empty_data_interval_fails_loudly_and_sends_nothing(sqlite_warehouse, kapture_conn, run_dag) -> None:
    """A cron-string schedule (CronTriggerTimetable) would select nothing, green, every run."""
    from airflow.timetables.trigger import CronTriggerTimetable

    sqlite_warehouse.insert_orders([order_row("00000001", DAY + HOUR)])
    with DAG(
        dag_id=f"kapture_cron_trigger_{uuid.uuid4().hex[:8]}",
        schedule=CronTriggerTimetable("0 * * * *", timezone="UTC"),
        start_date=DAY - dt.timedelta(days=1),
        default_args={"retries": 0},
    ) as dag:
        SqlToKaptureOrdersOperator(
            task_id=TASK_ID, sql_conn_id="erp_warehouse", sql="SELECT order_id, customer_name FROM erp_orders "
            "WHERE updated_at >= :start AND updated_at < :end", window_parameters=("start", "end"),
        )  # fmt: skip

    outcome = run_dag(dag, DAY + 2 * HOUR)

    assert outcome.task_states[TASK_ID] == "failed"
    assert sent_ids(kapture_conn) == Counter()


def test_asset_event_only_when_orders_were_delivered_with_the_counts(
    sqlite_warehouse, kapture_conn, example_dag, run_dag
) -> None:
    sqlite_warehouse.insert_orders([order_row(f"0000000{n}", DAY + HOUR + n * dt.timedelta(minutes=1)) for n in (1, 2)])

    seen = latest_asset_event_id()
    delivered = run_dag(example_dag, DAY + 2 * HOUR)
    unchanged = run_dag(example_dag, DAY + 2 * HOUR)  # the same interval again: nothing to send
    empty = run_dag(example_dag, DAY + 5 * HOUR)  # an hour without changes

    assert [r.state for r in (delivered, unchanged, empty)] == ["success"] * 3
    assert unchanged.xcom(TASK_ID)["unchanged"] == 2
    (event,) = asset_events(delivered, unchanged, empty, after=seen)
    assert event == {
        "rows_read": 2, "succeeded": 2, "failed": 0, "invalid": 0, "unchanged": 0, "stale": 0, "retried": 0,
        "window_start": "2026-11-26T01:00:00+00:00", "window_end": "2026-11-26T02:00:00+00:00",
    }  # fmt: skip


def test_progress_is_logged_while_the_run_goes_on(kapture_fast_conn: KaptureEmulator, caplog) -> None:
    """Progress lines come every ``progress_seconds``, whether or not a new chunk was read."""
    kapture_fast_conn.configure(latency=0.02)
    rows = [order_row(f"{n:08d}", DAY) for n in range(60)]
    columns = ["order_id", "customer_name", "phone", "email_id", "city", "invoice_no", "invoice_date",
               "delivery_status", "payment_mode", "order_info.associate_fields.total_amount", "_at"]  # fmt: skip
    caplog.set_level(logging.INFO, logger="kapture_provider.sync.engine")
    engine = OrderSync(KaptureHook(), None, max_concurrency=1, progress_seconds=0.05)

    summary = engine.run(columns, [rows], expected_rows=60)  # one chunk: all read before the first request

    assert summary.succeeded == 60
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Kapture sync progress")]
    assert progress, "no progress line while 60 orders were sent one at a time"
    assert all(line.startswith("Kapture sync progress: 60 rows read of 60 (") for line in progress)
    assert any("%), ETA " in line for line in progress)  # once some rows are done, the rest is estimated
    assert any(" 0 failed" in line for line in progress)


def test_window_bounds_are_bound_as_utc_text(sqlite_warehouse, kapture_conn, example_dag, run_dag) -> None:
    """A row at exactly the window's end (UTC) belongs to the next window, whatever the params' offset."""
    sqlite_warehouse.insert_orders([order_row("00000001", DAY + 2 * HOUR), order_row("00000002", DAY + HOUR)])
    conf = {"window_start": "2026-11-26T06:30:00+05:30", "window_end": "2026-11-26T07:30:00+05:30"}

    outcome = run_dag(example_dag, DAY + 2 * HOUR, conf=conf)  # = [01:00, 02:00) UTC

    assert outcome.state == "success", outcome.task_states
    assert sent_ids(kapture_conn) == Counter({"00000002": 1})
