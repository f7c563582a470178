"""Helpers shared by the reliability tests: an emulator subprocess, expected bodies, ledger checks."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import inspect
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kapture_provider.payload import InvalidOrder, OrderMapper, PreparedOrder

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAG_FILE = REPO / "dags" / "kapture_erp_order_sync.py"
EXAMPLE_DAG_ID = "kapture_erp_order_sync"
EXAMPLE_TASK_ID = "sync_changed_orders"
LEDGER_TABLE = "kapture_order_sync_ledger"
ADD_UPDATE_PATH = "/ms/customer/order/api/v1/add-update"
EMULATOR_USER, EMULATOR_PASSWORD = "kapture-user", "kapture-password"
#: Kapture's credentials: the emulator shows stored orders' values only to a caller that has them.
EMULATOR_AUTHORIZATION = "Basic " + base64.b64encode(f"{EMULATOR_USER}:{EMULATOR_PASSWORD}".encode()).decode()
#: Small backoffs keep the matrix fast; the retry count and the classification are the real ones.
FAST_BACKOFF = {"backoff_base": 0.01, "backoff_max": 0.05}


def load_sync_fixtures() -> Any:
    """``tests/sync/conftest.py`` (warehouse fixtures, ``run_dag_at``, ``load_dag_file``) as a module of its own."""
    name = "kapture_reliability_sync_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "sync" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_example_dag() -> Any:
    """The example DAG, imported afresh from ``dags/kapture_erp_order_sync.py``."""
    return load_sync_fixtures().load_dag_file(EXAMPLE_DAG_FILE)


def breaker_parameters() -> tuple[int, int]:
    """N (``max_consecutive_transient``, as the operator builds the engine) and C (the example DAG's concurrency)."""
    from kapture_provider.sync.engine import OrderSync

    n = inspect.signature(OrderSync).parameters["max_consecutive_transient"].default
    return int(n), int(load_example_dag().get_task(EXAMPLE_TASK_ID).max_concurrency)


def down_bound(n: int, c: int, retries: int, per_attempt: float, base: float, cap: float) -> float:
    """Longest time spent sending while Kapture is down, from the code (see ``test_kapture_down.py``).

    At most N + C - 1 orders are attempted (the breaker trips after N consecutive transient failures, with
    C - 1 more in flight), each in at most T = (R + 1) x per_attempt + sum(min(cap, base x 2**a), a < R);
    list scheduling on C workers finishes them within (ceil((N + C - 1) / C) + 1) x T.
    """
    t_order = (retries + 1) * per_attempt + sum(min(cap, base * 2**a) for a in range(retries))
    return (math.ceil((n + c - 1) / c) + 1) * t_order


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The current environment (connections set with monkeypatch included) with ``overrides``."""
    env = os.environ.copy()
    env.update(overrides)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def kapture_conn_json(url: str, *, password: str = EMULATOR_PASSWORD, **extra: Any) -> str:
    """``AIRFLOW_CONN_KAPTURE_DEFAULT`` value for a Kapture at ``url`` (the emulator's credentials)."""
    return json.dumps(
        {"conn_type": "kapture", "host": url, "login": EMULATOR_USER, "password": password, "extra": extra}
    )


# --------------------------------------------------------------------------------------------------
# The emulator as a subprocess (``kapture-emulator``), driven over its /_emulator/ endpoints
# --------------------------------------------------------------------------------------------------


class EmulatorProcess:
    """``kapture-emulator --port P`` in a process of its own; inspected and configured over HTTP."""

    def __init__(self, workdir: Path, *, port: int = 0, record_bodies: bool = True, extra_args: Sequence[str] = ()):
        self.workdir = workdir
        self.record_bodies = record_bodies
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = port
        self.lives = 0
        self.start()

    def start(self) -> None:
        """Start (or restart, on the same port) the emulator and wait until it listens."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.lives += 1
        ready = self.workdir / f"ready-{self.lives}"
        args = [str(Path(sys.executable).with_name("kapture-emulator")), "--port", str(self.port)]
        args += ["--ready-file", str(ready), *self.extra_args]
        if not self.record_bodies:
            args.append("--no-record-bodies")
        log = (self.workdir / f"emulator-{self.lives}.log").open("wb")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env())
        log.close()
        give_up = time.monotonic() + 120  # a safety net against a hang, not a timing assertion
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError((self.workdir / f"emulator-{self.lives}.log").read_text())
            assert time.monotonic() < give_up, "kapture-emulator did not start"
            time.sleep(0.02)
        self.url = ready.read_text().strip()
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: the emulator dies at once, its in-memory orders with it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def _call(self, name: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.url}/_emulator/{name}",
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json", "Authorization": EMULATOR_AUTHORIZATION},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        self._call("reset", {})

    def configure(self, **changes: Any) -> None:
        self._call("config", changes)

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self._call(f"requests?since={since}"))

    def orders(self) -> dict[str, Any]:
        return dict(self._call("orders"))

    def stats(self) -> dict[str, Any]:
        return dict(self._call("stats"))

    def conn_json(self, **extra: Any) -> str:
        return kapture_conn_json(self.url, **extra)


# --------------------------------------------------------------------------------------------------
# What the warehouse says: the bodies the sync must leave in Kapture
# --------------------------------------------------------------------------------------------------


@dataclass
class Expected:
    """The orders a query selects, mapped exactly as the operator maps them."""

    valid: dict[str, PreparedOrder] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)  # order id -> reason
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # order id -> the row as selected

    def body(self, order_id: str) -> Any:
        return json.loads(self.valid[order_id].data)


def expected_orders(db_path: Path, sql: str, parameters: Mapping[str, Any] | Sequence[Any] = ()) -> Expected:
    """Run ``sql`` on the SQLite warehouse and map every row like the operator (newest row per order)."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        cur = conn.execute(sql, parameters)
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
    mapper = OrderMapper(columns)
    expected = Expected()
    for row in rows:
        values = dict(zip(columns, row, strict=True))
        order_id = str(values.get("order_id"))
        expected.rows[order_id] = values
        try:
            expected.valid[order_id] = mapper.prepare(row)
        except InvalidOrder as err:
            expected.invalid[order_id] = str(err)
    return expected


def ledger_rows(db_path: Path, table: str = LEDGER_TABLE) -> dict[str, dict[str, Any]]:
    """The ledger as ``order_id -> row`` ({} when it does not exist yet)."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.row_factory = sqlite3.Row
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        if not exists:
            return {}
        return {row["order_id"]: dict(row) for row in conn.execute(f"SELECT * FROM {table}")}


def by_status(ledger: Mapping[str, Mapping[str, Any]], status: str) -> set[str]:
    return {order_id for order_id, row in ledger.items() if row["status"] == status}


def stores_per_order(records: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """How many requests changed Kapture's store, per order id (> 1: the order was sent twice)."""
    return Counter(r["order_id"] for r in records if r["stored"])


def assert_accounting(summary: Mapping[str, Any]) -> None:
    """Every row read (and every earlier failure retried) is counted exactly once in one outcome."""
    outcomes = ("succeeded", "failed", "unchanged", "stale", "invalid", "duplicates")
    assert summary["rows_read"] + summary["retried"] == sum(summary[k] for k in outcomes), summary
    assert summary["succeeded"] + summary["failed"] == summary["to_send"], summary
    failed_ids = [o["order_id"] for o in summary["failed_orders"]]
    assert len(failed_ids) == len(set(failed_ids)) == min(summary["failed"], 1000), "an order counted twice"
    invalid_rows = [o["row"] for o in summary["invalid_rows"]]
    assert len(invalid_rows) == len(set(invalid_rows)) == min(summary["invalid"], 1000)


def assert_store_matches(stored: Mapping[str, Any], expected: Expected, order_ids: Iterable[str]) -> None:
    """Kapture holds, for each of these orders, exactly the body the warehouse row maps to."""
    for order_id in order_ids:
        assert order_id in stored, f"order {order_id} is not in Kapture"
        body = stored[order_id]
        assert body == expected.body(order_id), f"order {order_id}: Kapture holds another body"
        row = expected.rows[order_id]  # and, independently of the mapper, the values that matter
        assert body["order_info"]["order_id"] == row["order_id"]
        assert body["customer_info"]["customer_name"] == row["customer_name"]
        assert body["customer_info"]["email_id"] == row["email_id"]
        assert body["order_info"]["invoice_no"] == row["invoice_no"]


class FakeTaskInstance:
    """The part of a task instance ``SqlToKaptureOrdersOperator.execute`` uses: XCom pushes."""

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value
