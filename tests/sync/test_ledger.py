"""The ledger's one connection serves every sending thread, and commits without waiting for a disk flush."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from kapture_provider.compat import BaseHook
from kapture_provider.sync.ledger import DELIVERED, FAILED, Ledger, Outcome

NOW = "2026-11-27T10:00:00.000000Z"
WAREHOUSE_CONN_ID = "erp_warehouse"  # what the warehouse fixtures point at


def warehouse_ledger() -> Ledger:
    return Ledger(BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook())


def test_outcomes_recorded_by_many_threads_at_once_are_all_kept(warehouse: Any) -> None:
    ledger = warehouse_ledger()
    ledger.create()
    threads, per_thread = 8, 150

    def record_one_by_one(thread: int) -> None:
        for n in range(per_thread):
            order_id = f"{thread}-{n}"
            if n % 10 == 0:  # a failed one now and then, with the body it still owes
                ledger.record([Outcome(order_id, FAILED, "h", None, b'{"x": 1}', "HTTP 500")], NOW)
            else:
                ledger.record([Outcome(order_id, DELIVERED, "h", f"n:{n}")], NOW)

    workers = [threading.Thread(target=record_one_by_one, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    ledger.close()

    rows = warehouse.ledger()
    assert len(rows) == threads * per_thread
    failed = {order_id for order_id, row in rows.items() if row["status"] == FAILED}
    assert failed == {f"{t}-{n}" for t in range(threads) for n in range(0, per_thread, 10)}
    assert all(json.loads(rows[order_id]["pending_body"]) == {"x": 1} for order_id in failed)


def test_postgres_ledger_session_commits_without_waiting_for_the_flush(postgres_warehouse: Any) -> None:
    ledger = warehouse_ledger()
    cur = ledger.conn.cursor()
    cur.execute("SHOW synchronous_commit")
    assert cur.fetchone()[0] == "off"
    cur.close()
    ledger.close()


def test_in_memory_sqlite_ledger_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MEMORY_LEDGER", json.dumps({"conn_type": "sqlite", "host": ":memory:"}))
    ledger = Ledger(BaseHook.get_connection("memory_ledger").get_hook())
    with pytest.raises(ValueError, match="needs a SQLite database file"):
        ledger.create()
