"""Sync metrics through Airflow's own ``Stats``: a StatsD listener on a loopback UDP port during ``airflow dags test``.

The example hourly sync DAG runs in its own process (``airflow dags test``) with Airflow's StatsD backend on
(InfluxDB-style tags, so that the packets carry ``dag_id`` and ``task_id``) against the Kapture emulator,
which answers chosen orders with a 429, a 503 (both with ``Retry-After``), a 500 and a refusal. The counters
in the packets must equal what the emulator received and the ledger recorded. Then the example manual
update DAG.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kapture_provider.testing.emulator import ADD_UPDATE_PATH, Fault, KaptureEmulator

pytestmark = pytest.mark.system  # runs the airflow CLI (airflow dags test)

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")
LOGICAL_DATE = "2026-11-26T02:00:00+00:00"  # the interval [01:00, 02:00)
SYNC_TAGS = {"dag_id": "kapture_erp_order_sync", "task_id": "sync_changed_orders"}


@dataclass
class Packets:
    """StatsD packets by metric name (Airflow's prefix kept): counter sums, gauge values, timer samples, tags."""

    counters: Counter[str] = field(default_factory=Counter)
    gauges: dict[str, float] = field(default_factory=dict)
    timers: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    tags: defaultdict[str, set[tuple[tuple[str, str], ...]]] = field(default_factory=lambda: defaultdict(set))

    def add(self, line: str) -> None:
        head, _, value_and_type = line.rpartition(":")
        name, *tags = head.split(",")
        value, kind = value_and_type.split("|")[:2]
        self.tags[name].add(tuple(sorted(tuple(tag.split("=", 1)) for tag in tags)))  # type: ignore[misc]
        if kind == "c":
            self.counters[name] += int(value)
        elif kind == "g":
            self.gauges[name] = float(value)
        elif kind == "ms":
            self.timers[name].append(float(value))


class StatsdListener:
    """Receives UDP datagrams on 127.0.0.1 in a thread until stopped, then reads what is left."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                self.lines.extend(self.sock.recv(65536).decode().splitlines())
            except TimeoutError:
                continue

    def packets(self, prefix: str) -> Packets:
        """Everything received so far (the sender has exited: its datagrams are all in the socket)."""
        self._stop.set()
        self._thread.join()
        self.sock.setblocking(False)
        while True:
            try:
                self.lines.extend(self.sock.recv(65536).decode().splitlines())
            except BlockingIOError:
                break
        self._stop.clear()
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()
        received = Packets()
        for line in self.lines:
            if line.startswith(prefix):
                received.add(line)
        self.lines = []
        return received

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.close()


def airflow_cli(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"airflow {' '.join(args)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


@dataclass
class ExampleSync:
    """The README's SQLite warehouse and the example DAG files in ``tmp_path``, and the CLI's environment."""

    warehouse: Path
    hour: list[str]  # the valid orders of the interval [01:00, 02:00)
    rows_in_hour: int
    env: dict[str, str]


def example_sync(tmp_path: Path, dag_files: dict[str, str] | None = None, **env: str) -> ExampleSync:
    """Seed the warehouse, copy the example DAGs (and write ``dag_files``: name -> source) and
    ``airflow dags reserialize`` them, with ``env`` set."""
    warehouse = tmp_path / "erp.db"
    subprocess.run([sys.executable, "-m", "kapture_provider.testing.warehouse", "--db", str(warehouse)], check=True)
    window = "updated_at >= '2026-11-26 01:00:00' AND updated_at < '2026-11-26 02:00:00'"
    with sqlite3.connect(warehouse) as conn:
        hour = [
            order_id
            for (order_id,) in conn.execute(
                f"SELECT order_id FROM erp_orders WHERE customer_name <> '' AND {window} ORDER BY order_id"
            )
        ]
        rows_in_hour = conn.execute(f"SELECT COUNT(*) FROM erp_orders WHERE {window}").fetchone()[0]
    conn.close()
    dags = tmp_path / "dags"
    dags.mkdir()
    for dag_file in (REPO / "dags").glob("*.py"):
        shutil.copy(dag_file, dags / dag_file.name)
    for name, source in (dag_files or {}).items():
        (dags / name).write_text(source)
    cli_env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_CONN_ERP_WAREHOUSE": f'{{"conn_type": "sqlite", "host": "{warehouse}"}}',
        **env,
    }
    airflow_cli("dags", "reserialize", env=cli_env)
    return ExampleSync(warehouse, hour, rows_in_hour, cli_env)


def test_statsd_packets_count_what_kapture_received(
    tmp_path: Path, kapture_conn: KaptureEmulator, statsd: StatsdListener, airflow_metadata_db: Path
) -> None:
    started = time.monotonic()
    sync = example_sync(
        tmp_path,
        AIRFLOW__METRICS__STATSD_ON="True",
        AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
        AIRFLOW__METRICS__STATSD_PORT=str(statsd.port),
        AIRFLOW__METRICS__STATSD_PREFIX="airflow",
        AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED="True",
    )
    warehouse, hour, env = sync.warehouse, sync.hour, sync.env
    kapture_conn.configure(retry_after=0)
    for order_id, fault in zip(hour, (Fault.HTTP_429, Fault.HTTP_503, Fault.HTTP_500, Fault.FAILED_BODY), strict=False):
        kapture_conn.script_for_order(order_id, fault)  # once each: the first three are delivered on a retry
    statsd.packets("airflow.")  # what parsing sent, if anything

    output = airflow_cli("dags", "test", "kapture_erp_order_sync", LOGICAL_DATE, env=env)

    got = statsd.packets("airflow.kapture.")
    requests = [r for r in kapture_conn.requests if r.path == ADD_UPDATE_PATH]
    with sqlite3.connect(warehouse) as conn:
        ledger = dict(conn.execute("SELECT status, COUNT(*) FROM kapture_order_sync_ledger GROUP BY status"))
    conn.close()
    assert len(kapture_conn.orders) == len(hour) - 1, output[-4000:]
    expected = {
        "airflow.kapture.requests": len(requests),
        "airflow.kapture.orders.delivered": len(kapture_conn.orders),
        "airflow.kapture.orders.refused": 1,
        "airflow.kapture.orders.invalid": sync.rows_in_hour - len(hour),
        "airflow.kapture.answers.429": sum(r.status == 429 for r in requests),
        "airflow.kapture.answers.503": sum(r.status == 503 for r in requests),
        "airflow.kapture.retry_after_pauses": 2,
    }
    assert got.counters == {name: count for name, count in expected.items() if count}, output[-4000:]
    assert ledger["delivered"] == len(kapture_conn.orders)
    assert len(got.timers["airflow.kapture.latency"]) == len(requests)
    assert set(got.gauges) == {"airflow.kapture.orders.owed", "airflow.kapture.orders.oldest_owed_age_seconds"}
    assert got.gauges["airflow.kapture.orders.owed"] == 1  # the refused order
    assert 0 < got.gauges["airflow.kapture.orders.oldest_owed_age_seconds"] < time.monotonic() - started
    sync_tags = {tuple(sorted(SYNC_TAGS.items()))}
    assert got.tags == {name: sync_tags for name in [*got.counters, *got.timers, *got.gauges]}

    # the manual update DAG: its one order delivered
    before = len(kapture_conn.requests)
    airflow_cli("dags", "test", "kapture_update_order", env=env)

    update = statsd.packets("airflow.kapture.")
    assert len(kapture_conn.requests) == before + 1
    assert update.counters == {"airflow.kapture.requests": 1, "airflow.kapture.orders.delivered": 1}
    assert len(update.timers["airflow.kapture.latency"]) == 1
    update_tags = {(("dag_id", "kapture_update_order"), ("task_id", "update_order"))}
    assert update.tags["airflow.kapture.orders.delivered"] == update_tags
