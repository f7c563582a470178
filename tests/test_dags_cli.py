"""The README's commands for the example sync DAG, run with the installed Airflow's own ``airflow`` CLI.

As a user does: seed the example SQLite warehouse (``python -m kapture_provider.testing.warehouse``), put
the example DAG files in a DAGs folder, ``airflow dags reserialize`` (every example DAG must parse), then
``airflow dags test kapture_erp_order_sync 2026-11-26T02:00:00+00:00``, a run of the interval
[01:00, 02:00) in a process of its own. The Kapture emulator must then hold exactly the valid orders of
that hour, each received once, and the ledger must say they were delivered.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")
EXAMPLE_DAG_IDS = {"kapture_erp_order_sync", "kapture_erp_order_sync_sharded", "kapture_update_order"}
LOGICAL_DATE = "2026-11-26T02:00:00+00:00"  # a data-interval timetable: the run covers [01:00, 02:00)


def airflow_cli(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"airflow {' '.join(args)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def test_airflow_dags_test_runs_the_hourly_sync(
    tmp_path: Path, kapture_conn: KaptureEmulator, airflow_metadata_db: Path
) -> None:
    warehouse = tmp_path / "erp.db"
    # the README's command, word for word (in the folder that gets erp.db)
    seed = [sys.executable, "-m", "kapture_provider.testing.warehouse", "--db", "erp.db"]
    subprocess.run(seed, cwd=tmp_path, check=True)
    with sqlite3.connect(warehouse) as conn:
        expected = {
            order_id
            for (order_id,) in conn.execute(
                "SELECT order_id FROM erp_orders WHERE customer_name <> '' "
                "AND updated_at >= '2026-11-26 01:00:00' AND updated_at < '2026-11-26 02:00:00'"
            )
        }
    dags = tmp_path / "dags"
    dags.mkdir()
    for dag_file in (REPO / "dags").glob("*.py"):
        shutil.copy(dag_file, dags / dag_file.name)
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_CONN_ERP_WAREHOUSE": f'{{"conn_type": "sqlite", "host": "{warehouse}"}}',
    }

    airflow_cli("dags", "reserialize", env=env)
    with sqlite3.connect(airflow_metadata_db) as meta:
        errors = meta.execute("SELECT filename, stacktrace FROM import_error").fetchall()
        parsed = {dag_id for (dag_id,) in meta.execute("SELECT dag_id FROM dag")}
    assert not errors, f"example DAGs failed to parse: {errors}"
    assert parsed >= EXAMPLE_DAG_IDS

    output = airflow_cli("dags", "test", "kapture_erp_order_sync", LOGICAL_DATE, env=env)

    per_order = Counter(r.order_id for r in kapture_conn.requests if r.path == ADD_UPDATE_PATH)
    assert len(expected) == 750  # the README's warehouse: 3,000 orders over 4 hours (the 3 invalid ones in hour one)
    assert set(per_order) == expected, output[-4000:]
    assert max(per_order.values()) == 1
    assert set(kapture_conn.orders) == expected
    with sqlite3.connect(warehouse) as conn:
        ledger = dict(conn.execute("SELECT status, COUNT(*) FROM kapture_order_sync_ledger GROUP BY status"))
    assert ledger == {"delivered": len(expected)}
