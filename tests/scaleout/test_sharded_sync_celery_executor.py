"""``dags/kapture_erp_order_sync_sharded.py`` on CeleryExecutor: two workers, one of them killed mid-run.

The deployment of ``harness.py`` (API server, DAG processor, scheduler, PostgreSQL metadata DB and
ledger) with ``CeleryExecutor``: the scheduler puts each shard's task on a Redis queue (127.0.0.1:6379,
a database and a queue of this pytest process), and two ``airflow celery worker`` processes take them,
each standing in for a machine of its own (its own Celery node name and ``task_instance.hostname``,
``machine-a`` and ``machine-b``), with 2 slots each. Airflow's Celery settings apply: a worker reserves
only the tasks it has slots for and acknowledges a task's message only when the task is done.

1. The 4 shards start on both machines (2 each).
2. Once a shard of ``machine-a`` has sent some of its orders, every process of ``machine-a`` (the Celery
   worker, its pool, the task supervisors and tasks) is SIGKILLed at once, as if the machine died.
3. The task instances it ran stop heartbeating; the scheduler fails them after ``[scheduler]
   task_instance_heartbeat_timeout`` (20 s here), and retries them after the DAG's ``retry_delay`` (its
   2 minutes cut to :data:`RETRY_DELAY_SECONDS` by a cluster policy of this deployment) on the machine still alive.
4. The run succeeds; every valid order of the interval reached Kapture (the emulator), and the ledger
   says delivered. Orders of the surviving shards were sent once each; a killed shard's second try
   resends only what its first try had in flight (its ledger did not say delivered yet), at most
   ``max_concurrency`` (8) orders per killed shard.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from harness import (
    BIN,
    DAG_ID,
    ORDERS,
    SHARDS,
    TASK_ID,
    Children,
    Phases,
    add_update_requests,
    airflow_env,
    assert_all_delivered,
    backfill_the_interval,
    dump_task_logs,
    query,
    report,
    seed_warehouse,
    start_and_parse,
    start_emulator,
    task_instances,
    wait_for_run,
    xcom_summaries,
)

from kapture_provider.sync.engine import shard_of

pytestmark = [pytest.mark.system, pytest.mark.scaleout, pytest.mark.timeout(600)]

MACHINES = ("machine-a", "machine-b")
SLOTS_PER_MACHINE = 2
MAX_CONCURRENCY = 8  # the sharded DAG's max_concurrency per shard: requests a shard can have in flight
KILL_AFTER_REQUESTS = 60  # of one of machine-a's shards: it is then well into its orders (750 each)
#: start-up, a run, 20 s to notice the dead machine, the retry delay, the retries, checks
BUDGET_SECONDS = 480.0
#: The DAG's ``retry_delay`` in this deployment: the test waits for the retry, not for the DAG's 2 minutes.
RETRY_DELAY_SECONDS = 5
REDIS_DB = os.getpid() % 15 + 1  # database 0 left alone; the queue is this process's too


@pytest.fixture
def broker() -> Iterator[str]:
    """A Redis database for this test's Celery messages, emptied afterwards."""
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    yield url
    redis.Redis.from_url(url).flushdb()


def celery_executor(meta_db: str, broker: str) -> dict[str, str]:
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@127.0.0.1:5432/{meta_db}",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"kapture-test-{os.getpid()}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(SLOTS_PER_MACHINE),
        # a dead machine's task instances are failed (and retried) this long after their last heartbeat
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }


def shorten_retry_delay(home: Path) -> None:
    """An Airflow cluster policy (``$AIRFLOW_HOME/config/airflow_local_settings.py``) that every component of
    the deployment applies to the parsed DAG: its tasks' ``retry_delay`` becomes :data:`RETRY_DELAY_SECONDS`."""
    config = home / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "airflow_local_settings.py").write_text(
        "import datetime\n\n\ndef task_policy(task):\n"
        f"    task.retry_delay = datetime.timedelta(seconds={RETRY_DELAY_SECONDS})\n"
    )


def start_worker(children: Children, machine: str, env: dict[str, str]) -> None:
    """``airflow celery worker`` as ``machine``: its Celery node name and the hostname its tasks record."""
    machine_env = {
        **env,
        "KAPTURE_TEST_MACHINE": machine,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "machine.hostname",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")])),
    }
    children.start(
        machine,
        [BIN / "airflow", "celery", "worker", "--celery-hostname", f"{machine}@%h", "--skip-serve-logs",
         "--without-mingle", "--without-gossip"],
        machine_env,
    )  # fmt: skip


def wait_for_shards_on_both_machines(children: Children, meta_db: str, deadline: float) -> tuple[str, dict[int, str]]:
    """Wait until all shards run, on both machines; returns the run id and shard → machine."""
    while time.monotonic() < deadline:
        children.check_alive()
        rows = query(
            meta_db,
            "SELECT run_id, map_index, hostname FROM task_instance WHERE dag_id = %s AND task_id = %s "
            "AND state = 'running' AND hostname = ANY(%s)",
            (DAG_ID, TASK_ID, list(MACHINES)),
        )
        if len(rows) == SHARDS:
            placement = {index: host for _, index, host in rows}
            assert set(placement.values()) == set(MACHINES), f"the shards did not land on both machines: {placement}"
            return rows[0][0], placement
        time.sleep(0.5)
    raise AssertionError("the shards did not all start")


def wait_for_requests_of(emulator_url: str, shards: set[int], count: int, deadline: float) -> None:
    """Wait until one of ``shards`` has had ``count`` orders sent."""
    while time.monotonic() < deadline:
        sent = Counter(shard_of(r["order_id"], SHARDS) for r in add_update_requests(emulator_url))
        if any(sent[shard] >= count for shard in shards):
            return
        time.sleep(0.3)
    raise AssertionError(f"shards {shards} sent nothing")


def test_shards_survive_a_celery_worker_killed_mid_run(
    tmp_path: Path, scaleout_databases: dict[str, str], children: Children, broker: str
) -> None:
    deadline = time.monotonic() + BUDGET_SECONDS
    meta_db, warehouse_db = scaleout_databases["meta"], scaleout_databases["warehouse"]
    home = tmp_path / "airflow"
    phase = Phases()
    try:
        valid_ids = seed_warehouse(warehouse_db)
        emulator_url = start_emulator(children, tmp_path)
        env = airflow_env(home, meta_db, warehouse_db, emulator_url, celery_executor(meta_db, broker))
        shorten_retry_delay(home)
        start_and_parse(children, env, meta_db, deadline, phase)
        for machine in MACHINES:
            start_worker(children, machine, env)
        backfill_the_interval(children, env, deadline, phase)

        run_id, placement = wait_for_shards_on_both_machines(children, meta_db, deadline)
        phase(f"shards running: {placement}")
        killed = {index for index, machine in placement.items() if machine == "machine-a"}
        wait_for_requests_of(emulator_url, killed, KILL_AFTER_REQUESTS, deadline)
        sent_before_kill = Counter(shard_of(r["order_id"], SHARDS) for r in add_update_requests(emulator_url))
        pids = children.crash("machine-a")
        phase(f"machine-a SIGKILLed ({len(pids)} processes) with shards {sorted(killed)} running")

        final_run_id, state = wait_for_run(children, meta_db, deadline)
        phase(f"run finished: {state}")
        tis = task_instances(meta_db, run_id)
        requests = add_update_requests(emulator_url)
        report(run_id, state, tis, requests)

        # -- the run succeeded; the killed shards were retried on the machine still alive -------------------
        assert final_run_id == run_id and state == "success"
        assert [(t[0], t[1]) for t in tis] == [(i, "success") for i in range(SHARDS)]
        for index, _, _, _, tries, _, host in tis:
            assert host == "machine-b", f"shard {index} finished on {host}"
            assert tries == (2 if index in killed else 1), f"shard {index}: {tries} tries"
        for index in killed:  # killed mid-way: some of its orders were sent, not all
            assert 0 < sent_before_kill[index] < Counter(shard_of(o, SHARDS) for o in valid_ids)[index]

        # -- nothing lost; resent only what a killed shard had in flight ------------------------------------
        per_order = assert_all_delivered(emulator_url, warehouse_db, valid_ids)
        resent = Counter(shard_of(order_id, SHARDS) for order_id, n in per_order.items() if n > 1)
        print(f"  orders sent twice, per shard: {dict(resent)}")
        assert max(per_order.values()) <= 2
        assert set(resent) <= killed, f"a shard that was not killed sent twice: {resent}"
        assert all(n <= MAX_CONCURRENCY for n in resent.values()), f"more resent than in flight: {resent}"

        # -- the second tries skipped what the first ones had recorded as delivered ----------------------
        summaries = xcom_summaries(meta_db, run_id)
        expected = Counter(shard_of(order_id, SHARDS) for order_id in valid_ids)
        assert sum(s["rows_read"] for s in summaries.values()) == ORDERS
        for index, summary in summaries.items():
            assert summary["succeeded"] + summary["unchanged"] == expected[index], index
            assert (summary["unchanged"] > 0) == (index in killed), index
    except BaseException:
        children.dump_logs()
        dump_task_logs(home)
        raise
