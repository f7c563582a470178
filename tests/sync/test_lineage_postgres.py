"""OpenLineage datasets of a sync whose warehouse (and ledger) is PostgreSQL, named by the postgres hook's own
OpenLineage database info: ``airflow dags test`` of the example hourly sync with the provider's ``file`` transport."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from kapture_provider.hooks.kapture import ORDER_PATH
from kapture_provider.testing.emulator import KaptureEmulator
from kapture_provider.testing.warehouse import generate_orders

pytestmark = pytest.mark.integration
# the compatibility matrix installs the test extra only, without the OpenLineage provider
pytest.importorskip("airflow.providers.openlineage", reason="the OpenLineage provider is not installed")

DAY = dt.datetime(2026, 11, 26)
SYNC_JOB = "kapture_erp_order_sync.sync_changed_orders"


def test_postgres_tables_named_in_the_servers_namespace(
    postgres_warehouse: Any, kapture_conn: KaptureEmulator, airflow_cli: Any, tmp_path: Path
) -> None:
    rows = list(generate_orders(40, DAY + dt.timedelta(hours=1), DAY + dt.timedelta(hours=2), seed=3))
    postgres_warehouse.insert_orders(rows)
    event_file = tmp_path / "openlineage.jsonl"
    transport = {"type": "file", "log_file_path": str(event_file), "append": True}

    run = airflow_cli(
        "kapture_erp_order_sync",
        (DAY + dt.timedelta(hours=2)).replace(tzinfo=dt.UTC),
        {"AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport)},
    )

    assert run.state == "success", run.output[-4000:]
    events = [json.loads(line) for line in event_file.read_text().splitlines()]
    (complete,) = [e for e in events if e["job"]["name"] == SYNC_JOB and e["eventType"] == "COMPLETE"]
    namespace, prefix = "postgres://127.0.0.1:5432", f"test.{postgres_warehouse.schema}"
    ledger = {"namespace": namespace, "name": f"{prefix}.kapture_order_sync_ledger"}
    assert [{k: d[k] for k in ("namespace", "name")} for d in complete["inputs"]] == [
        {"namespace": namespace, "name": f"{prefix}.erp_orders"},
        ledger,
    ]
    assert [{k: d[k] for k in ("namespace", "name")} for d in complete["outputs"]] == [
        ledger,
        {"namespace": kapture_conn.url, "name": ORDER_PATH},
    ]
    assert complete["outputs"][1]["outputFacets"]["outputStatistics"]["rowCount"] == len(kapture_conn.orders) == 40
    assert "customer_name" in complete["job"]["facets"]["sql"]["query"]
