"""What the scale-out tests share: a throw-away Airflow deployment running the sharded sync DAG.

Each test starts real Airflow components as child processes (``Children``) against PostgreSQL databases
of its own (Airflow's metadata, and the ERP warehouse that also holds the ledger): ``airflow db migrate``,
then the API server (the Task Execution API, the only way a task talks to Airflow), the DAG processor and
the scheduler, plus whatever the executor needs (Celery workers). The environment of every process comes
from :func:`airflow_env`: nothing inherited from the test session's own Airflow, the executor's settings
on top.

The warehouse holds one hour of orders (a few invalid) and the next hour's; ``airflow backfill create``
for that single interval makes the scheduler run the DAG once. The Kapture emulator (``kapture-emulator``,
20 ms per request) logs every request: the evidence of what was delivered, by which shard, when.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg

from kapture_provider.sync.engine import shard_of
from kapture_provider.testing.emulator import ADD_UPDATE_PATH
from kapture_provider.testing.warehouse import generate_orders, insert_orders

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


# --------------------------------------------------------------------------------------------------
# Child processes: each in a process group of its own, all killed at teardown
# --------------------------------------------------------------------------------------------------


class Children:
    """Long-running child processes with their logs; ``stop_all`` kills them and their descendants."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.crashed: set[str] = set()

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
            if proc.poll() is not None and name not in self.crashed:
                raise AssertionError(f"{name} exited early with code {proc.returncode}")

    def crash(self, name: str) -> list[int]:
        """SIGKILL a child and every process under it at once, as if its machine died; returns their pids."""
        family = self._family([self.procs[name]])
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=10)
        self.procs[name].wait(timeout=10)
        self.crashed.add(name)
        return [process.pid for process in family]

    @staticmethod
    def _family(procs: Sequence[subprocess.Popen[bytes]]) -> list[psutil.Process]:
        # Task processes put themselves in process groups of their own: collect every descendant.
        family: list[psutil.Process] = []
        for proc in procs:
            try:
                parent = psutil.Process(proc.pid)
                family += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return family

    def stop_all(self) -> None:
        family = self._family(list(self.procs.values()))
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
# PostgreSQL databases of a test: Airflow's metadata and the warehouse (with the ledger)
# --------------------------------------------------------------------------------------------------


def admin(sql: str) -> None:
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql)


def query(dbname: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(**PG, dbname=dbname) as conn:
        return [tuple(row) for row in conn.execute(sql, tuple(params)).fetchall()]


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


def airflow_env(
    home: Path, meta_db: str, warehouse_db: str, emulator_url: str, executor: dict[str, str]
) -> dict[str, str]:
    """The environment of every Airflow process: nothing inherited from the test session's Airflow.

    ``executor``: the executor's settings (``AIRFLOW__CORE__EXECUTOR`` and its own section), put on top.
    """
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
        AIRFLOW__CORE__PARALLELISM=str(SHARDS),  # task instances running at once: one per shard
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
    env.update(executor)
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


def start_and_parse(children: Children, env: dict[str, str], meta_db: str, deadline: float, phase: Phases) -> None:
    """Migrate the metadata DB, start the API server, DAG processor and scheduler, wait for the DAG."""
    run_cli(["db", "migrate"], env, deadline)
    phase("metadata DB migrated")
    start_airflow(children, env)
    wait_for_serialized_dag(children, meta_db, deadline)
    phase("DAG parsed and serialized by the dag-processor")


def backfill_the_interval(children: Children, env: dict[str, str], deadline: float, phase: Phases) -> None:
    """Ask for one run of the interval [01:00, 02:00): a data-interval timetable's logical date is its start."""
    logical_date = INTERVAL_START.isoformat() + "+00:00"
    backfill = start_cli(
        ["backfill", "create", "--dag-id", DAG_ID, "--from-date", logical_date, "--to-date", logical_date], env
    )
    wait_for_execution_api(children, env, deadline)
    phase("execution API answering")
    finish_cli(backfill, deadline)
    phase("backfill created")


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


def task_instances(meta_db: str, run_id: str) -> list[tuple[Any, ...]]:
    """The shards' task instances: (map_index, state, start_date, end_date, try_number, pid, hostname)."""
    return query(
        meta_db,
        "SELECT map_index, state, start_date, end_date, try_number, pid, hostname FROM task_instance "
        "WHERE dag_id = %s AND run_id = %s AND task_id = %s ORDER BY map_index",
        (DAG_ID, run_id, TASK_ID),
    )


def add_update_requests(emulator_url: str) -> list[dict[str, Any]]:
    """Every add-update request the emulator received, in order."""
    return [r for r in fetch_json(f"{emulator_url}/_emulator/requests") if r["path"] == ADD_UPDATE_PATH]


def assert_all_delivered(emulator_url: str, warehouse_db: str, valid_ids: set[str]) -> Counter[str]:
    """Every valid order of the interval reached Kapture and the ledger says so; returns requests per order."""
    requests = add_update_requests(emulator_url)
    per_order = Counter(r["order_id"] for r in requests)
    assert set(per_order) == valid_ids, "missing or unexpected orders"
    assert {r["status"] for r in requests} == {200}
    assert set(fetch_json(f"{emulator_url}/_emulator/orders")) == valid_ids
    ledger = dict(query(warehouse_db, "SELECT status, COUNT(*) FROM kapture_order_sync_ledger GROUP BY status"))
    assert ledger == {"delivered": len(valid_ids), "invalid": INVALID}
    return per_order


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
