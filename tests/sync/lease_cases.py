"""Overlapping runs of one sync, on one ledger: the cases every engine's lease must pass.

Imported by ``test_lease.py`` (SQLite, DuckDB) and ``test_lease_servers.py`` (PostgreSQL, MariaDB), each
of which provides the ``ledger_db`` fixture (a warehouse fixture of ``conftest.py``: connection
``erp_warehouse`` holds the ledger). Each run has its own Kapture hook, ledger and lease, as two
workers would; the emulator answers in 300 ms, so the runs overlap unless the lease keeps them apart.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kapture_erp_orders import ALL_ORDERS_SQL, CHANGED_ORDERS_SQL

from kapture_provider.compat import AIRFLOW_V_3_0_PLUS, BaseHook
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.sync.engine import OrderSync, SyncSummary
from kapture_provider.sync.lease import Lease, LeaseHolder, LeaseTimeout
from kapture_provider.sync.ledger import Ledger
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.testing.warehouse import generate_orders
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

TABLE = "kapture_order_sync_ledger"
COLUMNS = ["order_id", "customer_name"]
ROWS = [(f"L-{n:03d}", f"Customer {n}") for n in range(60)]
HOLDER_SCRIPT = Path(__file__).with_name("lease_holder.py")


@pytest.fixture
def slow_kapture(monkeypatch: pytest.MonkeyPatch) -> Iterator[KaptureEmulator]:
    """An emulator that answers every request after 300 ms, as ``kapture_default``."""
    with KaptureEmulator(latency=0.3) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", emulator.connection_json())
        yield emulator


def new_ledger() -> Ledger:
    return Ledger(BaseHook.get_connection("erp_warehouse").get_hook(), TABLE)


def holder(run_id: str) -> LeaseHolder:
    return LeaseHolder.this_process("kapture_erp_order_sync", run_id, "sync_orders")


def run_sync(run_id: str, *, timeout: float = 120.0, start: threading.Barrier | None = None) -> SyncSummary:
    """One run of the sync with its own hook, ledger and lease (waits at ``start`` first)."""
    ledger, hook = new_ledger(), KaptureHook(pool_size=8, max_requests_per_second=None)
    try:
        ledger.conn  # noqa: B018 - connected before the race, as the operator does before reading
        if start is not None:
            start.wait()
        lease = Lease(ledger, holder(run_id), timeout=timeout, poll_seconds=0.1)
        return OrderSync(hook, ledger, max_concurrency=8, lease=lease).run(COLUMNS, [ROWS])
    finally:
        ledger.close()
        hook.close()


def add_updates_per_order(emulator: KaptureEmulator) -> Counter[str | None]:
    return Counter(r.order_id for r in emulator.requests if r.path == ADD_UPDATE_PATH)


def test_two_runs_started_together_send_every_order_once(
    ledger_db: Any, slow_kapture: KaptureEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kapture_provider.sync.lease")
    start = threading.Barrier(2)
    summaries: dict[str, SyncSummary] = {}
    errors: list[BaseException] = []

    def run(run_id: str) -> None:
        try:
            summaries[run_id] = run_sync(run_id, start=start)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(run_id,)) for run_id in ("scheduled__1", "backfill__1")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert not errors, errors
    assert add_updates_per_order(slow_kapture) == Counter({order_id: 1 for order_id, _ in ROWS})
    outcomes = sorted((s.succeeded, s.unchanged, s.failed) for s in summaries.values())
    assert outcomes == [(0, 60, 0), (60, 0, 0)]  # the run that waited found everything delivered, unchanged
    assert {row["status"] for row in ledger_db.ledger(TABLE).values()} == {"delivered"}
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Waiting for the lease")]
    assert len(waits) == 1  # one line per 30 s of waiting, naming the run waited for
    assert re.search(r"held by run '(scheduled|backfill)__1' of kapture_erp_order_sync\.sync_orders on ", waits[0])


@pytest.mark.skipif(
    not AIRFLOW_V_3_0_PLUS,
    reason="Airflow 2's ExecutorSafeguard keeps its state per thread, so an operator cannot execute() in a "
    "second thread; the engine-level case above covers the lease on Airflow 2",
)
def test_the_hourly_sync_and_the_full_diff_started_together_send_every_order_once(
    ledger_db: Any, slow_kapture: KaptureEmulator
) -> None:
    """The operator itself, twice at once on one ledger: an hour's changes, and the nightly full-table diff."""
    hour = dt.datetime(2026, 11, 26, 9)
    orders = list(generate_orders(60, hour, hour + dt.timedelta(hours=1)))
    ledger_db.insert_orders(orders)
    window = {"start": "2026-11-26 09:00:00", "end": "2026-11-26 10:00:00"}
    operators = [
        SqlToKaptureOrdersOperator(task_id="sync_changed_orders", sql_conn_id="erp_warehouse", sql=CHANGED_ORDERS_SQL,
                                   parameters=window, version_column="_version"),
        SqlToKaptureOrdersOperator(task_id="sync_all_orders", sql_conn_id="erp_warehouse", sql=ALL_ORDERS_SQL),
    ]  # fmt: skip
    start = threading.Barrier(2)
    summaries: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run(operator: SqlToKaptureOrdersOperator) -> None:
        try:
            start.wait()
            summaries.append(operator.execute({}))  # type: ignore[arg-type]
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(operator,)) for operator in operators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert not errors, errors
    assert add_updates_per_order(slow_kapture) == Counter({str(order[0]): 1 for order in orders})
    assert sorted((s["succeeded"], s["unchanged"]) for s in summaries) == [(0, 60), (60, 0)]


def test_a_run_waiting_past_lease_timeout_fails_naming_the_holder(
    ledger_db: Any, slow_kapture: KaptureEmulator
) -> None:
    held = Lease(new_ledger(), holder("manual__holding"))
    held.acquire()
    try:
        with pytest.raises(LeaseTimeout, match=r"held by run 'manual__holding' of kapture_erp_order_sync\.sync_orders"):
            run_sync("scheduled__waiting", timeout=1.0)
    finally:
        held.release()
        held.ledger.close()
    assert not slow_kapture.requests  # nothing sent by the run that gave up


def test_a_dry_run_does_not_wait_for_the_lease(ledger_db: Any, slow_kapture: KaptureEmulator) -> None:
    held = Lease(new_ledger(), holder("manual__holding"))
    held.acquire()
    ledger, hook = new_ledger(), KaptureHook(max_requests_per_second=None)
    try:
        ledger.create()
        lease = Lease(ledger, holder("dry"), timeout=0.0)
        summary = OrderSync(hook, ledger, dry_run=True, lease=lease).run(COLUMNS, [ROWS])
    finally:
        held.release()
        held.ledger.close()
        ledger.close()
        hook.close()
    assert (summary.to_send, summary.succeeded) == (60, 0)
    assert not slow_kapture.requests


def test_a_killed_holders_lease_is_taken_over(ledger_db: Any, slow_kapture: KaptureEmulator) -> None:
    """A run killed holding the lease (SIGKILL: no release) blocks the next one only until its lease ends: the
    session closes with the process (advisory locks), or its row expires (here 2 s after its last heartbeat)."""
    killed = subprocess.Popen(
        [sys.executable, str(HOLDER_SCRIPT), "erp_warehouse", TABLE, "2"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert killed.stdout is not None
        lines = iter(killed.stdout.readline, "")
        assert any(line.strip() == "held" for line in lines), "the holder never took the lease"  # past its log
    finally:
        killed.kill()
        killed.wait()

    summary = run_sync("scheduled__after_kill", timeout=60.0)

    assert (summary.succeeded, summary.failed) == (60, 0)
    assert add_updates_per_order(slow_kapture) == Counter({order_id: 1 for order_id, _ in ROWS})


def test_shards_of_one_count_do_not_wait_for_each_other_but_a_whole_run_waits_for_them(ledger_db: Any) -> None:
    ledger = new_ledger()
    shard_0 = Lease(ledger, holder("sharded__0"), shard=(0, 4))
    shard_1 = Lease(new_ledger(), holder("sharded__1"), shard=(1, 4), timeout=0.0)
    whole = Lease(new_ledger(), holder("hourly"), shard=(0, 1), timeout=0.0)
    shard_0.acquire()
    try:
        shard_1.acquire()  # another shard: no order in common
        shard_1.release()
        with pytest.raises(LeaseTimeout, match="sharded__0"):
            whole.acquire()  # every order: shard 0's among them
        with pytest.raises(LeaseTimeout, match="sharded__0"):
            Lease(
                new_ledger(), holder("other count"), shard=(4, 8), timeout=0.0
            ).acquire()  # ids in 4 of 8 are in 0 of 4
    finally:
        shard_0.release()
    whole.acquire()
    whole.release()
