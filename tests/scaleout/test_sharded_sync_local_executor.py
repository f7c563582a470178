"""``dags/kapture_erp_order_sync_sharded.py`` run by a real Airflow: 4 mapped shards in parallel.

No ``dag.test()`` here: a throw-away Airflow (temporary ``AIRFLOW_HOME``, metadata DB in a PostgreSQL
database of its own, LocalExecutor) runs the DAG the way production does. Airflow 3 needs three
long-running components for that:

* ``airflow dag-processor``: parses the DAG files and writes the serialized DAGs (the scheduler no
  longer parses files);
* ``airflow scheduler``: creates the task instances and runs them through the LocalExecutor, one
  supervisor process per task instance (``[core] parallelism`` at most);
* ``airflow api-server --apps execution``: the Task Execution API, the only way a task process talks to
  Airflow (state, XCom, connections not found in the environment). The scheduler signs each task's
  token with ``[api_auth] jwt_secret`` and the API server checks it, so both get the same secret, and
  tasks find the server through ``[core] execution_api_server_url``.

All three share the environment built by ``airflow_env`` (LocalExecutor, PostgreSQL metadata DB, the
JWT secret, the Execution API URL, the connections as ``AIRFLOW_CONN_*``); the metadata DB is created with
``airflow db migrate`` first. The DAG must be unpaused (a paused DAG's runs stay queued, backfills
included): here it is active from its first parse (``dags_are_paused_at_creation = False``), with
``use_job_schedule = False`` so that the scheduler creates no run of its own.

One hour of orders is in the warehouse (another PostgreSQL database, which also holds the ledger);
``airflow backfill create`` for that single interval makes the scheduler run the DAG once (``airflow
dags trigger --logical-date`` would not do: a manual run's data interval is inferred from *now*). The
Kapture emulator (``kapture-emulator``, 20 ms per request) logs every request, so the test checks that
every valid order arrived exactly once, that all 4 shards succeeded, and that they ran at the same time.
The DAG files are copied into the temporary DAGs folder, so that DAG files being edited next to them
cannot disturb the test.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from pathlib import Path

import pytest
from harness import (
    DAG_ID,
    INTERVAL_END,
    INTERVAL_START,
    INVALID,
    ORDERS,
    SHARDS,
    Children,
    Phases,
    add_update_requests,
    airflow_env,
    assert_all_delivered,
    backfill_the_interval,
    dump_task_logs,
    max_overlap,
    query,
    report,
    seed_warehouse,
    shard_request_windows,
    start_and_parse,
    start_emulator,
    task_instances,
    wait_for_run,
    xcom_summaries,
)

from kapture_provider.sync.engine import shard_of

pytestmark = [pytest.mark.system, pytest.mark.scaleout, pytest.mark.timeout(290)]

#: LocalExecutor: one supervisor process per task instance, forked by the scheduler ([core] parallelism).
LOCAL_EXECUTOR = {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
#: Everything (start-up, run, checks) must be over well before pytest-timeout's 290 s.
BUDGET_SECONDS = 240.0


def test_four_shards_run_in_parallel_and_deliver_each_order_once(
    tmp_path: Path, scaleout_databases: dict[str, str], children: Children
) -> None:
    deadline = time.monotonic() + BUDGET_SECONDS
    meta_db, warehouse_db = scaleout_databases["meta"], scaleout_databases["warehouse"]
    home = tmp_path / "airflow"
    phase = Phases()
    try:
        valid_ids = seed_warehouse(warehouse_db)
        emulator_url = start_emulator(children, tmp_path)
        env = airflow_env(home, meta_db, warehouse_db, emulator_url, LOCAL_EXECUTOR)
        start_and_parse(children, env, meta_db, deadline, phase)
        backfill_the_interval(children, env, deadline, phase)
        run_id, state = wait_for_run(children, meta_db, deadline)
        phase(f"run finished: {state}")

        tis = task_instances(meta_db, run_id)
        requests = add_update_requests(emulator_url)
        report(run_id, state, tis, requests)

        # -- the run covered the one interval, and every shard succeeded on its first try -----------------
        assert state == "success"
        (interval,) = query(
            meta_db, "SELECT data_interval_start, data_interval_end FROM dag_run WHERE run_id = %s", (run_id,)
        )
        assert interval == (INTERVAL_START.replace(tzinfo=dt.UTC), INTERVAL_END.replace(tzinfo=dt.UTC))
        assert [(t[0], t[1]) for t in tis] == [(i, "success") for i in range(SHARDS)]
        assert [t[4] for t in tis] == [1] * SHARDS, "a shard needed a retry"
        assert len({t[5] for t in tis}) == SHARDS, "the shards did not run in processes of their own"

        # -- exactly once: one add-update request per valid order of the interval, all answered 200 --------
        per_order = assert_all_delivered(emulator_url, warehouse_db, valid_ids)
        assert max(per_order.values()) == 1, f"sent twice: {[k for k, n in per_order.items() if n > 1][:10]}"

        # -- each shard delivered exactly its own orders, and recorded them in the ledger -----------------
        summaries = xcom_summaries(meta_db, run_id)
        expected = Counter(shard_of(order_id, SHARDS) for order_id in valid_ids)
        assert {i: s["succeeded"] for i, s in summaries.items()} == {i: expected[i] for i in range(SHARDS)}
        assert sum(s["rows_read"] for s in summaries.values()) == ORDERS
        assert sum(s["invalid"] for s in summaries.values()) == INVALID
        assert query(warehouse_db, "SELECT MAX(attempts) FROM kapture_order_sync_ledger") == [(1,)]
        # every shard updated the hourly DAG's asset
        events = query(
            meta_db,
            "SELECT e.source_map_index FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'kapture_orders' AND e.source_dag_id = %s AND e.source_run_id = %s",
            (DAG_ID, run_id),
        )
        assert sorted(index for (index,) in events) == list(range(SHARDS))

        # -- the shards overlapped in time ----------------------------------------------------------------
        ti_windows = [(t[2].timestamp(), t[3].timestamp()) for t in tis]
        assert max_overlap(ti_windows) >= 2, f"the task instances never ran at the same time: {ti_windows}"
        request_windows = shard_request_windows(requests)
        assert max_overlap(list(request_windows.values())) >= 2, "no two shards sent requests at the same time"
        for index, (first, last) in request_windows.items():  # each shard's requests lie in its own task's run
            start, end = ti_windows[index]
            assert start - 1 <= first <= last <= end + 1, f"shard {index}: requests outside its task instance"
    except BaseException:
        children.dump_logs()
        dump_task_logs(home)
        raise
