"""OpenLineage events of real DAG runs, through the OpenLineage provider's ``file`` transport.

``airflow dags test`` runs the example hourly sync against the Kapture emulator (which refuses one order)
with the provider writing every event to a file; the sync task's events must name the warehouse table and
the ledger as inputs, the ledger and Kapture's orders as outputs, carry ``rowCount`` = the orders the
emulator accepted and the run's counts, and hold no customer name, phone number or email address. Then
a DAG of ``UpdateOrderOperator`` with one order written in it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_metrics import airflow_cli, example_sync

from kapture_provider.hooks.kapture import ORDER_PATH
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, Fault, KaptureEmulator

pytestmark = pytest.mark.system  # runs the airflow CLI (airflow dags test)

LOGICAL_DATE = "2026-11-26T02:00:00+00:00"  # the interval [01:00, 02:00)
SYNC_JOB = "kapture_erp_order_sync.sync_changed_orders"
CUSTOMER = {"customer_name": "Ishaan Venkataraman", "phone": "9123456780", "email_id": "ishaan.v@example.com"}
UPDATE_DAG = f"""
import pendulum
from airflow.providers.common.compat.sdk import DAG
from kapture_provider.operators.update_order import UpdateOrderOperator

with DAG("kapture_lineage_update", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC")):
    UpdateOrderOperator(
        task_id="update_order",
        orders={{"customer_info": {CUSTOMER!r}, "order_info": {{"order_id": "ORD-LINEAGE-1", "remarks": None}}}},
    )
"""


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def task_event(all_events: list[dict[str, Any]], job: str, event_type: str) -> dict[str, Any]:
    (found,) = [e for e in all_events if e["job"]["name"] == job and e["eventType"] == event_type]
    return found


def personal_data(warehouse: Path) -> set[str]:
    """Every customer name, phone number and email address in the warehouse."""
    with sqlite3.connect(warehouse) as conn:
        rows = conn.execute("SELECT customer_name, phone, email FROM erp_orders").fetchall()
    conn.close()
    return {str(value) for row in rows for value in row if value not in (None, "")}


def test_sync_events_carry_inputs_outputs_and_row_count(
    tmp_path: Path, kapture_conn: KaptureEmulator, airflow_metadata_db: Path
) -> None:
    event_file = tmp_path / "openlineage.jsonl"
    transport = {"type": "file", "log_file_path": str(event_file), "append": True}
    sync = example_sync(
        tmp_path, {"kapture_lineage_update.py": UPDATE_DAG}, AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps(transport)
    )
    refused = sync.hour[0]
    kapture_conn.script_for_order(refused, Fault.FAILED_BODY)

    output = airflow_cli("dags", "test", "kapture_erp_order_sync", LOGICAL_DATE, env=sync.env)

    accepted = len(kapture_conn.orders)
    assert accepted == len(sync.hour) - 1, output[-4000:]
    all_events = events(event_file)
    start, complete = task_event(all_events, SYNC_JOB, "START"), task_event(all_events, SYNC_JOB, "COMPLETE")
    database = f"sqlite://{sync.warehouse}"
    ledger = {"namespace": database, "name": "main.kapture_order_sync_ledger"}
    kapture = {"namespace": kapture_conn.url, "name": ORDER_PATH}
    for event in (start, complete):
        assert [{k: d[k] for k in ("namespace", "name")} for d in event["inputs"]] == [
            {"namespace": database, "name": "main.erp_orders"},
            ledger,
        ]
        assert [{k: d[k] for k in ("namespace", "name")} for d in event["outputs"]] == [ledger, kapture]
        assert event["job"]["facets"]["sql"]["query"].startswith("SELECT")
    assert "outputStatistics" not in start["outputs"][1].get("outputFacets", {})  # nothing delivered yet
    assert complete["outputs"][1]["outputFacets"]["outputStatistics"]["rowCount"] == accepted
    counts = complete["run"]["facets"]["kaptureSync"]
    with sqlite3.connect(sync.warehouse) as conn:
        owed = conn.execute("SELECT COUNT(*) FROM kapture_order_sync_ledger WHERE status = 'failed'").fetchone()[0]
    conn.close()
    assert {k: v for k, v in counts.items() if not k.startswith("_")} == {
        "succeeded": accepted,
        "failed": 1,
        "refused": 1,
        "invalid": sync.rows_in_hour - len(sync.hour),
        "unchanged": 0,
        "stale": 0,
        "parked": 0,
        "still_owed": owed,
        "rows_read": sync.rows_in_hour,
        "requests": len([r for r in kapture_conn.requests if r.path == ADD_UPDATE_PATH]),
        "dry_run": False,
    }
    text = event_file.read_text()
    assert not [value for value in personal_data(sync.warehouse) if value in text]

    # a DAG of UpdateOrderOperator with one order written in it
    airflow_cli("dags", "test", "kapture_lineage_update", env=sync.env)

    update = task_event(events(event_file), "kapture_lineage_update.update_order", "COMPLETE")
    assert kapture_conn.orders["ORD-LINEAGE-1"]["customer_info"] == CUSTOMER
    assert update["inputs"] == []
    assert [{k: d[k] for k in ("namespace", "name")} for d in update["outputs"]] == [kapture]
    assert update["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 1
    assert update["run"]["facets"]["kaptureSync"]["succeeded"] == 1
    text = event_file.read_text()
    assert not [value for value in CUSTOMER.values() if value in text]
