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
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from kapture_provider.sync.engine import shard_of
from kapture_provider.testing.emulator import ADD_UPDATE_PATH
from kapture_provider.testing.warehouse import generate_orders, insert_orders

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(290)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAG_FILES = ("kapture_erp_order_sync_sharded.py", "kapture_erp_orders.py")  # the second is imported
DAG_ID = "kapture_erp_order_sync_sharded"
TASK_ID = "sync_changed_orders"
SHARDS = 4
ORDERS = 3000
INVALID = 3  # rows with an empty customer name: reported, never sent
OUTSIDE = 200  # orders of the next hour: not this run's
INTERVAL_START = dt.datetime(2026, 11, 26, 1, 0)
INTERVAL_END = INTERVAL_START + dt.timedelta(hours=1)
LATENCY = 0.02
PG: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PG_CONN = {"host": PG["host"], "port": PG["port"], "login": PG["user"]}  # as an Airflow connection
#: Everything (start-up, run, checks) must be over well before pytest-timeout's 290 s.
BUDGET_SECONDS = 240.0


# --------------------------------------------------------------------------------------------------
# Child processes: each in a process group of its own, all killed at teardown
# --------------------------------------------------------------------------------------------------


class Children:
    """Long-running child processes with their logs; ``stop_all`` kills them and their descendants."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: Sequence[object], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log_path(name), "wb") as log:
            proc = subprocess.Popen(
                [str(part) for part in cmd],
                env=env,
                cwd=self.log_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited early with code {proc.returncode}")

    def stop_all(self) -> None:
        # Task processes put themselves in process groups of their own: collect every descendant first.
        family: list[psutil.Process] = []
        for proc in self.procs.values():
            try:
                parent = psutil.Process(proc.pid)
                family += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for group in _groups(family):
            _signal_group(group, signal.SIGTERM)
        _, survivors = psutil.wait_procs(family, timeout=15)
        for group in _groups(survivors):
            _signal_group(group, signal.SIGKILL)
        for process in survivors:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(survivors, timeout=5)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def dump_logs(self, tail: int = 6000) -> None:
        for name in self.procs:
            text = self.log_path(name).read_text(errors="replace") if self.log_path(name).exists() else ""
            print(f"\n===== {name} (last {tail} chars of {self.log_path(name)}) =====\n{text[-tail:]}")


def _groups(processes: list[psutil.Process]) -> set[int]:
    """The process groups of these (live) processes, never the test's own group."""
    groups = set()
    for process in processes:
        try:
            groups.add(os.getpgid(process.pid))
        except ProcessLookupError:
            pass
    return groups - {os.getpgrp()}


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# PostgreSQL databases of this test: Airflow's metadata and the warehouse (with the ledger)
# --------------------------------------------------------------------------------------------------


def _admin(sql: str) -> None:
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def scaleout_databases() -> Iterator[dict[str, str]]:
    """Two fresh databases, named after this pytest process so that concurrent sessions never clash."""
    suffix = os.getpid()
    names = {"meta": f"kapture_scaleout_meta_{suffix}", "warehouse": f"kapture_scaleout_wh_{suffix}"}
    for name in names.values():
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        _admin(f"CREATE DATABASE {name}")
    yield names
    for name in names.values():
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def query(dbname: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(**PG, dbname=dbname) as conn:
        return [tuple(row) for row in conn.execute(sql, tuple(params)).fetchall()]


# --------------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    procs = Children(tmp_path)
    yield procs
    procs.stop_all()


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
        env = airflow_env(home, meta_db, warehouse_db, emulator_url)
        run_cli(["db", "migrate"], env, deadline)
        phase("metadata DB migrated")
        start_airflow(children, env)
        wait_for_serialized_dag(children, meta_db, deadline)
        phase("DAG parsed and serialized by the dag-processor")
        # One run for the interval [01:00, 02:00): a data-interval timetable's logical date is its start.
        logical_date = INTERVAL_START.isoformat() + "+00:00"
        backfill = start_cli(
            ["backfill", "create", "--dag-id", DAG_ID, "--from-date", logical_date, "--to-date", logical_date], env
        )
        wait_for_execution_api(children, env, deadline)
        phase("execution API answering")
        finish_cli(backfill, deadline)
        phase("backfill created")
        run_id, state = wait_for_run(children, meta_db, deadline)
        phase(f"run finished: {state}")

        tis = query(
            meta_db,
            "SELECT map_index, state, start_date, end_date, try_number, pid, hostname FROM task_instance "
            "WHERE dag_id = %s AND run_id = %s AND task_id = %s ORDER BY map_index",
            (DAG_ID, run_id, TASK_ID),
        )
        requests = [r for r in fetch_json(f"{emulator_url}/_emulator/requests") if r["path"] == ADD_UPDATE_PATH]
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
        per_order = Counter(r["order_id"] for r in requests)
        assert set(per_order) == valid_ids, "missing or unexpected orders"
        assert max(per_order.values()) == 1, f"sent twice: {[k for k, n in per_order.items() if n > 1][:10]}"
        assert {r["status"] for r in requests} == {200}
        assert set(fetch_json(f"{emulator_url}/_emulator/orders")) == valid_ids

        # -- each shard delivered exactly its own orders, and recorded them in the ledger -----------------
        summaries = xcom_summaries(meta_db, run_id)
        expected = Counter(shard_of(order_id, SHARDS) for order_id in valid_ids)
        assert {i: s["succeeded"] for i, s in summaries.items()} == {i: expected[i] for i in range(SHARDS)}
        assert sum(s["rows_read"] for s in summaries.values()) == ORDERS
        assert sum(s["invalid"] for s in summaries.values()) == INVALID
        ledger = dict(query(warehouse_db, "SELECT status, COUNT(*) FROM kapture_order_sync_ledger GROUP BY status"))
        assert ledger == {"delivered": len(valid_ids), "invalid": INVALID}
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


# --------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------


class Phases:
    """Prints how long after the start each step was done (shown with -s, or on failure)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, name: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f} s] {name}", flush=True)


def seed_warehouse(dbname: str) -> set[str]:
    """The interval's orders (a few invalid) and the next hour's; returns the valid ids of the interval."""
    rows = list(generate_orders(ORDERS, INTERVAL_START, INTERVAL_END, invalid=INVALID))
    later = list(
        generate_orders(OUTSIDE, INTERVAL_END, INTERVAL_END + dt.timedelta(hours=1), seed=8, first_id=24_000_000)
    )
    with psycopg.connect(**PG, dbname=dbname) as conn:
        insert_orders(conn, rows + later, placeholder="%s")
    return {row[0] for row in rows[INVALID:]}


def start_emulator(children: Children, tmp_path: Path) -> str:
    ready = tmp_path / "emulator.url"
    children.start(
        "emulator",
        [BIN / "kapture-emulator", "--port", "0", "--latency", LATENCY, "--no-record-bodies", "--ready-file", ready],
        dict(os.environ),
    )
    for _ in range(200):
        if ready.exists() and ready.read_text().strip():
            return ready.read_text().strip()
        children.check_alive()
        time.sleep(0.05)
    raise AssertionError("the Kapture emulator did not start")


def airflow_env(home: Path, meta_db: str, warehouse_db: str, emulator_url: str) -> dict[str, str]:
    """The environment of every Airflow process: nothing inherited from the test session's Airflow."""
    dags = home / "dags"
    dags.mkdir(parents=True)
    for name in DAG_FILES:
        shutil.copy(REPO / "dags" / name, dags / name)
    api_port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM=str(SHARDS),  # LocalExecutor worker processes: one per shard
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg://{PG['user']}@{PG['host']}:{PG['port']}/{meta_db}",
        # tasks reach the Execution API here; the scheduler signs their tokens with the secret it checks
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(api_port),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
        AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        # Only the run the test asks for: no scheduled run of the current hour. And the DAG is active
        # as soon as it is parsed (a paused DAG's runs stay queued, backfills included), which saves an
        # `airflow dags unpause` (seconds of CPU) on this busy machine.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        # parse each file once: no re-parsing every 30 s while the test runs
        AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="600",
        # the scheduler serves task logs on this port (8793 by default: taken if two of these tests run)
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW_CONN_ERP_WAREHOUSE=json.dumps({"conn_type": "postgres", **PG_CONN, "schema": warehouse_db}),
        AIRFLOW_CONN_KAPTURE_DEFAULT=json.dumps(
            {"conn_type": "kapture", "host": emulator_url, "login": "kapture-user", "password": "kapture-password"}
        ),
        PYTHONUNBUFFERED="1",
    )
    return env


def run_cli(args: list[str], env: dict[str, str], deadline: float) -> None:
    finish_cli(start_cli(args, env), deadline)


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "airflow"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish_cli(proc: subprocess.Popen[bytes], deadline: float) -> None:
    command = " ".join(str(arg) for arg in proc.args[1:])  # type: ignore[index]
    try:
        output, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"airflow {command} did not finish in time") from None
    text = output.decode(errors="replace")
    assert proc.returncode == 0, f"airflow {command} failed ({proc.returncode}):\n{text[-4000:]}"


def start_airflow(children: Children, env: dict[str, str]) -> None:
    children.start("api-server", [BIN / "airflow", "api-server", "--apps", "execution"], env)
    children.start("dag-processor", [BIN / "airflow", "dag-processor"], env)
    children.start("scheduler", [BIN / "airflow", "scheduler"], env)


def wait_for_execution_api(children: Children, env: dict[str, str], deadline: float) -> None:
    """Wait until the Execution API answers (its first request builds the app: many seconds of CPU)."""
    health = env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] + "health"
    while time.monotonic() < deadline:
        children.check_alive()
        try:
            with urllib.request.urlopen(health, timeout=max(deadline - time.monotonic(), 1)) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the API server did not answer {health}")


def wait_for_serialized_dag(children: Children, meta_db: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        children.check_alive()
        if query(meta_db, "SELECT to_regclass('serialized_dag') IS NOT NULL")[0][0] and query(
            meta_db, "SELECT 1 FROM serialized_dag WHERE dag_id = %s", (DAG_ID,)
        ):
            errors = query(meta_db, "SELECT filename, stacktrace FROM import_error")
            assert not errors, f"DAG import errors: {errors}"
            return
        time.sleep(0.5)
    raise AssertionError(f"the DAG processor did not serialize {DAG_ID}")


def wait_for_run(children: Children, meta_db: str, deadline: float) -> tuple[str, str]:
    """Wait for the backfill's one run to finish; returns its run id and final state."""
    state = None
    while time.monotonic() < deadline:
        children.check_alive()
        runs = query(meta_db, "SELECT run_id, state FROM dag_run WHERE dag_id = %s", (DAG_ID,))
        assert len(runs) <= 1, f"more runs than the one asked for: {runs}"
        if runs:
            run_id, state = runs[0]
            if state in ("success", "failed"):
                return run_id, state
        time.sleep(1)
    raise AssertionError(f"the run did not finish in time (state {state})")


# --------------------------------------------------------------------------------------------------
# Evidence
# --------------------------------------------------------------------------------------------------


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def xcom_summaries(meta_db: str, run_id: str) -> dict[int, dict[str, Any]]:
    rows = query(
        meta_db,
        "SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s AND key = 'return_value'",
        (DAG_ID, run_id, TASK_ID),
    )
    return {index: value if isinstance(value, dict) else json.loads(value) for index, value in rows}


def shard_request_windows(requests: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """Shard → (first, last) time the emulator received one of its orders."""
    windows: dict[int, tuple[float, float]] = {}
    for r in requests:
        shard = shard_of(r["order_id"], SHARDS)
        first, last = windows.get(shard, (r["received_at"], r["received_at"]))
        windows[shard] = (min(first, r["received_at"]), max(last, r["received_at"]))
    return dict(sorted(windows.items()))


def max_overlap(windows: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` windows open at one instant."""
    # at equal times an end sorts before a start: windows that only touch do not overlap
    events = sorted([(start, 1) for start, _ in windows] + [(end, -1) for _, end in windows])
    open_now = best = 0
    for _, step in events:
        open_now += step
        best = max(best, open_now)
    return best


def report(run_id: str, state: str, tis: list[tuple[Any, ...]], requests: list[dict[str, Any]]) -> None:
    """Print what ran when (shown with -s, or on failure)."""
    origin = min(t[2].timestamp() for t in tis if t[2] is not None) if any(t[2] for t in tis) else 0.0
    print(f"\nrun {run_id}: {state}; {len(requests)} add-update requests")
    for index, ti_state, start, end, tries, pid, host in tis:
        span = f"{start.timestamp() - origin:6.2f} s → {end.timestamp() - origin:6.2f} s" if start and end else "-"
        print(f"  shard {index}: {ti_state}, try {tries}, pid {pid} on {host}, ran {span}")
    for shard, (first, last) in shard_request_windows(requests).items():
        print(f"  shard {shard}: requests from {first - origin:6.2f} s to {last - origin:6.2f} s")
    if tis and all(t[2] and t[3] for t in tis):
        windows = [(t[2].timestamp(), t[3].timestamp()) for t in tis]
        print(f"  task instances running at once, at most: {max_overlap(windows)}")
        print(f"  shards sending at once, at most: {max_overlap(list(shard_request_windows(requests).values()))}")


def dump_task_logs(home: Path, tail: int = 4000) -> None:
    for path in sorted((home / "logs").glob(f"dag_id={DAG_ID}/**/*.log")):
        print(f"\n===== task log {path.relative_to(home)} =====\n{path.read_text(errors='replace')[-tail:]}")
