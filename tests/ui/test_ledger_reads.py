"""The Kapture page reads each ledger at most once per LEDGER_CACHE_SECONDS; a retry forgets it at once."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from kapture_provider.compat import AIRFLOW_V_3_1_PLUS
from kapture_provider.sync.ledger import PARKED, Outcome
from kapture_provider.sync.times import time_text

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not AIRFLOW_V_3_1_PLUS, reason="the page is served by Airflow 3.1+'s API server"),
]


def test_a_ledger_is_read_once_until_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kapture_provider.ui.app import LedgerReads, open_ledger

    path = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PAGE_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    key = ("page_ledger", "kapture_order_sync_ledger")
    with open_ledger(key) as ledger:
        ledger.create()
        ledger.record(
            [Outcome("P1", PARKED, body_hash="h", body=b"{}", error="refused", refusals=3)],
            time_text(dt.datetime.now(dt.UTC)),
        )
    reads = LedgerReads()

    first = reads.state(key)
    path.write_bytes(b"not a database " * 512)  # any further read of it fails
    again = reads.state(key)  # within LEDGER_CACHE_SECONDS: not read again

    assert again is first and first.owed.parked == 1 and [o.order_id for o in first.owed_orders] == ["P1"]
    reads.forget(key)
    with pytest.raises(sqlite3.DatabaseError):
        reads.state(key)
