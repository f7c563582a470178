"""``docs/catch-up.md`` followed literally on a scheduler-driven deployment (Airflow 3).

A fresh deployment as the page describes it: a temporary ``AIRFLOW_HOME``, the metadata DB in a
PostgreSQL database of its own, LocalExecutor, the scheduler, DAG processor and API server running, the
API server on a non-default port (``[api] base_url`` and ``[core] execution_api_server_url`` set as
step 0 says), new DAGs paused (Airflow's default) and the scheduler making its own runs (Airflow's
default). Then the page's steps 1 and 2b, as written: ``airflow dags reserialize``, ``airflow backfill
create … --from-date 2026-11-26T00:00 --to-date 2026-11-26T02:00``, ``airflow dags unpause``.

Checked: the backfill's runs stay queued until the unpause; the two inclusive dates make 3 runs, one per
hour, each syncing its own hour; every order of the warehouse arrived at the Kapture emulator once.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from harness import (
    PG,
    REPO,
    Children,
    Phases,
    add_update_requests,
    airflow_env,
    query,
    run_cli,
    start_airflow,
    start_emulator,
    wait_for_execution_api,
)

from kapture_provider.compat import AIRFLOW_V_3_0_PLUS
from kapture_provider.testing.warehouse import generate_orders, insert_orders

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not AIRFLOW_V_3_0_PLUS, reason="backfill create and the dag-processor are Airflow 3's"),
    pytest.mark.timeout(290),
]

DAG_ID = "kapture_erp_order_sync"
DAG_FILES = ("kapture_erp_order_sync.py", "kapture_erp_orders.py")
FROM_DATE, TO_DATE = "2026-11-26T00:00:00+00:00", "2026-11-26T02:00:00+00:00"  # as in the page, shorter
HOURS = 3  # both dates inclusive
ORDERS_PER_HOUR = 3
BUDGET_SECONDS = 250.0
#: A fresh deployment's behaviour, which the harness turns off for its own tests: new DAGs are paused and
#: the scheduler creates the runs of the DAGs' schedules.
FRESH_DEPLOYMENT = {
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
}


def seed(dbname: str) -> set[str]:
    """``ORDERS_PER_HOUR`` orders in each hour of the backfill; returns their ids."""
    start = dt.datetime.fromisoformat(FROM_DATE).replace(tzinfo=None)
    rows = [
        row
        for hour in range(HOURS)
        for row in generate_orders(
            ORDERS_PER_HOUR,
            start + dt.timedelta(hours=hour),
            start + dt.timedelta(hours=hour + 1),
            seed=hour,
            first_id=30_000_000 + 100 * hour,
        )
    ]
    with psycopg.connect(**PG, dbname=dbname) as conn:
        insert_orders(conn, rows, placeholder="%s")
    return {row[0] for row in rows}


def dag_runs(meta_db: str) -> list[tuple[str, str, str, dt.datetime | None]]:
    """(run type, state, run id, data interval start) of the DAG's runs."""
    return [
        (str(run_type), str(state), str(run_id), start)
        for run_type, state, run_id, start in query(
            meta_db,
            "SELECT run_type, state, run_id, data_interval_start FROM dag_run WHERE dag_id = %s "
            "ORDER BY data_interval_start",
            (DAG_ID,),
        )
    ]


def wait_for_scheduler_loops(children: Children, meta_db: str, deadline: float, loops: int = 2) -> None:
    """Wait until the scheduler has heartbeaten ``loops`` times since now: it has looked at the queued runs."""
    ((since,),) = query(meta_db, "SELECT now()")
    for _ in range(loops):
        while time.monotonic() < deadline:
            children.check_alive()
            ((beat,),) = query(meta_db, "SELECT MAX(latest_heartbeat) FROM job WHERE job_type = 'SchedulerJob'")
            if beat is not None and beat > since:
                since = beat
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the scheduler stopped heartbeating")


def test_catch_up_page_followed_literally_makes_one_run_per_hour_and_delivers_every_order_once(
    tmp_path: Path, scaleout_databases: dict[str, str], children: Children
) -> None:
    deadline = time.monotonic() + BUDGET_SECONDS
    meta_db, warehouse_db = scaleout_databases["meta"], scaleout_databases["warehouse"]
    home = tmp_path / "airflow"
    phase = Phases()
    try:
        order_ids = seed(warehouse_db)
        emulator_url = start_emulator(children, tmp_path)
        env = airflow_env(home, meta_db, warehouse_db, emulator_url, FRESH_DEPLOYMENT)
        for path in (home / "dags").iterdir():  # the hourly example DAG, not the harness's sharded one
            path.unlink()
        for name in DAG_FILES:
            shutil.copy(REPO / "dags" / name, home / "dags" / name)
        # step 0: the API server on a port of its own, said to every component
        env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"{env['AIRFLOW__API__BASE_URL']}/execution/"
        assert env["AIRFLOW__API__PORT"] != "8080"
        run_cli(["db", "migrate"], env, deadline)
        start_airflow(children, env)
        phase("scheduler, dag-processor and api-server started")

        # step 1
        run_cli(["dags", "reserialize"], env, deadline)
        assert query(meta_db, "SELECT is_paused FROM dag WHERE dag_id = %s", (DAG_ID,)) == [(True,)]
        phase("DAG parsed: paused, as on any fresh deployment")

        # step 2b, as written
        run_cli(
            ["backfill", "create", "--dag-id", DAG_ID, "--max-active-runs", "1", "--reprocess-behavior", "completed",
             "--from-date", FROM_DATE, "--to-date", TO_DATE],
            env, deadline,
        )  # fmt: skip
        wait_for_execution_api(children, env, deadline)
        wait_for_scheduler_loops(children, meta_db, deadline)
        queued = dag_runs(meta_db)
        assert [(t, s) for t, s, _, _ in queued] == [("backfill", "queued")] * HOURS, queued
        assert not add_update_requests(emulator_url)
        phase(f"backfill created: {len(queued)} runs, queued while the DAG is paused")
        run_cli(["dags", "unpause", DAG_ID], env, deadline)
        phase("unpaused")

        backfill: list[tuple[str, str, str, dt.datetime | None]] = []
        while time.monotonic() < deadline:
            children.check_alive()
            backfill = [run for run in dag_runs(meta_db) if run[0] == "backfill"]
            if all(state in ("success", "failed") for _, state, _, _ in backfill):
                break
            time.sleep(1)
        phase(f"backfill runs finished: {[state for _, state, _, _ in backfill]}")

        # -- one run per hour, both dates included, each syncing its own hour ------------------------------
        start = dt.datetime.fromisoformat(FROM_DATE)
        assert [(state, interval) for _, state, _, interval in backfill] == [
            ("success", start + dt.timedelta(hours=hour)) for hour in range(HOURS)
        ]
        # -- every order arrived once, and the ledger says delivered ---------------------------------------
        per_order = Counter(r["order_id"] for r in add_update_requests(emulator_url))
        assert per_order == Counter(dict.fromkeys(order_ids, 1)), per_order
        ledger = dict(query(warehouse_db, "SELECT status, COUNT(*) FROM kapture_order_sync_ledger GROUP BY status"))
        assert ledger == {"delivered": len(order_ids)}
        # -- each run's asset event names the window it synced ---------------------------------------------
        extras = query(
            meta_db,
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE e.source_dag_id = %s "
            "AND e.source_run_id = ANY(%s) ORDER BY e.timestamp",
            (DAG_ID, [run_id for _, _, run_id, _ in backfill]),
        )
        windows = sorted((extra["window_start"], extra["window_end"]) for (extra,) in extras)
        assert windows == [
            ((start + dt.timedelta(hours=h)).isoformat(), (start + dt.timedelta(hours=h + 1)).isoformat())
            for h in range(HOURS)
        ]
    except BaseException:
        children.dump_logs()
        raise
