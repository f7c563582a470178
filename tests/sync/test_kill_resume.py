"""A sync SIGKILLed mid-run resumes: everything is delivered, at most ``max_concurrency`` orders twice."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from types import ModuleType

from kapture_provider.testing.emulator import KaptureEmulator
from kapture_provider.testing.warehouse import generate_orders

WORKER = Path(__file__).with_name("kill_resume_worker.py")
ORDERS, INVALID = 600, 2
KILL_AFTER_STORED = 120


def load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kapture_kill_resume_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_worker(summary: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, str(WORKER), str(summary)], stdout=out, stderr=subprocess.STDOUT)


def test_killed_sync_resumes_without_losing_or_repeating_more_than_in_flight(
    sqlite_warehouse, kapture_conn: KaptureEmulator, tmp_path: Path
) -> None:
    kapture_conn.configure(latency=0.05)  # ~160 orders/s through 8 slots: the run lasts a few seconds
    start = dt.datetime(2026, 11, 26)
    rows = list(generate_orders(ORDERS, start, start + dt.timedelta(hours=3), invalid=INVALID, seed=21))
    sqlite_warehouse.insert_orders(rows)
    valid = {row[0]: row for row in rows[INVALID:]}
    max_concurrency = load_worker().MAX_CONCURRENCY
    assert max_concurrency == 8

    first = start_worker(tmp_path / "first.json", tmp_path / "first.log")
    try:
        give_up = time.monotonic() + 240  # a safety net against a hang, not a timing assertion
        while sum(r.stored for r in kapture_conn.requests) < KILL_AFTER_STORED:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < give_up, "the worker sent too few requests"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "first.json").exists()

    delivered_before = set(kapture_conn.orders)
    assert KILL_AFTER_STORED <= len(delivered_before) < len(valid)  # killed mid-run
    ledger = sqlite_warehouse.ledger()
    recorded = {order_id for order_id, entry in ledger.items() if entry["status"] == "delivered"}
    assert recorded <= delivered_before  # the ledger never claims what Kapture does not have
    assert len(delivered_before - recorded) <= max_concurrency  # only the requests in flight are unknown

    # The second run goes to completion; in-process (same worker code) to spare a second Airflow import.
    assert load_worker().main(["worker", str(tmp_path / "second.json")]) == 0
    summary = json.loads((tmp_path / "second.json").read_text())

    stored = kapture_conn.orders
    assert set(stored) == set(valid)
    for order_id, body in stored.items():
        row = valid[order_id]
        assert body["order_info"]["invoice_no"] == row[5]
        assert body["customer_info"]["email_id"] == row[3]
        assert Decimal(str(body["order_info"]["associate_fields"]["total_amount"])) == row[9]
    repeated = [order_id for order_id, count in kapture_conn.update_counts.items() if count > 1]
    assert len(repeated) <= max_concurrency
    assert set(repeated) <= delivered_before - recorded

    assert summary["rows_read"] == ORDERS
    assert summary["invalid"] == INVALID
    assert summary["unchanged"] == len(recorded)
    assert summary["succeeded"] == summary["requests"] == len(valid) - len(recorded)
    assert summary["failed"] == 0
    ledger = sqlite_warehouse.ledger()
    assert {order_id for order_id, entry in ledger.items() if entry["status"] == "delivered"} == set(valid)
    assert {order_id for order_id, entry in ledger.items() if entry["status"] == "invalid"} == {
        row[0] for row in rows[:INVALID]
    }
