"""The ledger on every engine it supports (SQLite, PostgreSQL, MariaDB, DuckDB): what it keeps, read back."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pendulum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kapture_provider.compat import BaseHook
from kapture_provider.sync.ledger import (
    DELIVERED,
    INVALID,
    OWED,
    Ledger,
    Outcome,
)
from kapture_provider.sync.ledger_sql import LedgerNotSupported
from kapture_provider.sync.times import TIME_FORMAT, parse_time, time_text

NOW = "2026-11-27T10:00:00.000000Z"
LATER = "2026-11-27T11:00:00.000000Z"
WAREHOUSE_CONN_ID = "erp_warehouse"  # what the warehouse fixtures point at
#: The ledger table as airflow-provider-kapture 0.1.0 created it (and its index, where the engine has one).
V010_DDL = [
    """CREATE TABLE IF NOT EXISTS {table} (
        order_id VARCHAR(255) NOT NULL PRIMARY KEY,
        status VARCHAR(16) NOT NULL,
        body_hash VARCHAR(64),
        version VARCHAR(255),
        pending_body TEXT,
        pending_hash VARCHAR(64),
        pending_version VARCHAR(255),
        last_error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        first_seen_at VARCHAR(32) NOT NULL,
        last_attempt_at VARCHAR(32) NOT NULL,
        delivered_at VARCHAR(32)
    )""",
    "CREATE INDEX IF NOT EXISTS {table}_status_idx ON {table} (status, last_attempt_at)",
]


def warehouse_ledger(table: str = "kapture_order_sync_ledger") -> Ledger:
    return Ledger(BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook(), table)


def test_outcomes_recorded_by_many_threads_at_once_are_all_kept(any_warehouse: Any) -> None:
    ledger = warehouse_ledger()
    ledger.create()
    threads, per_thread = 8, 60

    def record_one_by_one(thread: int) -> None:
        for n in range(per_thread):
            order_id = f"{thread}-{n}"
            if n % 10 == 0:  # a failed one now and then, with the body it still owes
                ledger.record([Outcome(order_id, OWED, "h", None, b'{"x": 1}', "HTTP 500")], NOW)
            else:
                ledger.record([Outcome(order_id, DELIVERED, "h", f"n:{n}")], NOW)

    workers = [threading.Thread(target=record_one_by_one, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    ledger.close()

    rows = any_warehouse.ledger()
    assert len(rows) == threads * per_thread
    failed = {order_id for order_id, row in rows.items() if row["status"] == OWED}
    assert failed == {f"{t}-{n}" for t in range(threads) for n in range(0, per_thread, 10)}
    assert all(json.loads(rows[order_id]["pending_body"]) == {"x": 1} for order_id in failed)


def test_one_batch_of_every_kind_of_outcome_is_committed_whole(any_warehouse: Any) -> None:
    """Delivered, failed and invalid outcomes (two statements, one transaction), one order twice: the last wins."""
    ledger = warehouse_ledger()
    ledger.create()
    ledger.record(
        [
            Outcome("A-1", DELIVERED, "h1", "n:1"),
            Outcome("B-2", OWED, "h2", "n:1", '{"name": "Kavya Nair — ಕಾವ್ಯ"}'.encode(), "HTTP 500"),
            Outcome("C-3", INVALID, error="customer_info.customer_name: is missing or empty (mandatory)"),
            Outcome("A-1", DELIVERED, "h1b", "n:2"),
        ],
        NOW,
    )
    ledger.close()

    rows = any_warehouse.ledger()
    assert {k: (v["status"], v["body_hash"], v["version"], v["attempts"]) for k, v in rows.items()} == {
        "A-1": (DELIVERED, "h1b", "n:2", 2),
        "B-2": (OWED, None, None, 1),
        "C-3": (INVALID, None, None, 1),
    }
    assert json.loads(rows["B-2"]["pending_body"]) == {"name": "Kavya Nair — ಕಾವ್ಯ"}
    assert (rows["B-2"]["pending_hash"], rows["B-2"]["pending_version"]) == ("h2", "n:1")


def test_order_ids_are_compared_byte_for_byte(any_warehouse: Any) -> None:
    ledger = warehouse_ledger()
    ledger.create()
    ids = ["AB-1", "ab-1", "cd-2", "cd-2 ", "\u00e9-3", "e\u0301-3"]  # é precomposed and combining
    ledger.record([Outcome(order_id, DELIVERED, f"hash of {order_id!r}") for order_id in ids], NOW)

    found = ledger.lookup(["ab-1", "cd-2 ", "e\u0301-3", "zz-9"])
    ledger.close()

    assert {k: v.body_hash for k, v in found.items()} == {
        "ab-1": "hash of 'ab-1'",
        "cd-2 ": "hash of 'cd-2 '",
        "e\u0301-3": "hash of 'e\u0301-3'",
    }
    assert sorted(any_warehouse.ledger()) == sorted(ids)


def test_failing_since_is_the_first_failure_since_the_last_delivery(any_warehouse: Any) -> None:
    ledger = warehouse_ledger()
    ledger.create()

    def failing_since() -> Any:
        return any_warehouse.ledger()["A-1"]["failing_since"]

    ledger.record([Outcome("A-1", OWED, "h", None, b"{}", "HTTP 503")], NOW)
    assert failing_since() == NOW
    ledger.record([Outcome("A-1", OWED, "h", None, b"{}", "HTTP 503")], LATER)
    assert failing_since() == NOW
    ledger.record([Outcome("A-1", DELIVERED, "h", None)], LATER)
    assert failing_since() is None
    ledger.record([Outcome("A-1", INVALID, error="customer_info.customer_name: is missing")], LATER)
    assert failing_since() == LATER
    ledger.close()


def test_a_delivery_without_a_version_keeps_the_version_known(any_warehouse: Any) -> None:
    """The full-table diff (no version column) next to the hourly sync: backfills stay checked against n:3."""
    ledger = warehouse_ledger()
    ledger.create()
    ledger.record([Outcome("A-1", DELIVERED, "h1", "n:3"), Outcome("B-2", DELIVERED, "h1", "n:3")], NOW)
    ledger.record([Outcome("A-1", DELIVERED, "h2", None), Outcome("B-2", DELIVERED, "h2", "n:4")], LATER)
    entries = ledger.lookup(["A-1", "B-2"])
    ledger.close()

    assert {k: (e.body_hash, e.version) for k, e in entries.items()} == {"A-1": ("h2", "n:3"), "B-2": ("h2", "n:4")}


def test_a_ledger_created_by_version_0_1_0_is_brought_up_to_date(any_warehouse: Any) -> None:
    for statement in V010_DDL:
        any_warehouse.execute(statement.format(table="kapture_order_sync_ledger"))
    p = any_warehouse.placeholder
    any_warehouse.execute(
        "INSERT INTO kapture_order_sync_ledger (order_id, status, body_hash, version, attempts, first_seen_at, "
        f"last_attempt_at, delivered_at) VALUES ({p}, 'delivered', 'h-old', 'n:1', 1, {p}, {p}, {p})",
        ("AB-1", NOW, NOW, NOW),
    )
    ledger = warehouse_ledger()

    ledger.create()
    ledger.record([Outcome("ab-1", OWED, "h", None, b"{}", "HTTP 500")], LATER)  # a different order
    found = ledger.lookup(["AB-1", "ab-1"])
    ledger.close()

    assert {k: (v.status, v.body_hash) for k, v in found.items()} == {
        "AB-1": ("delivered", "h-old"),
        "ab-1": ("failed", None),
    }
    rows = any_warehouse.ledger()
    assert (rows["AB-1"]["failing_since"], rows["ab-1"]["failing_since"]) == (None, LATER)


def test_schema_qualified_ledger_table(any_warehouse: Any) -> None:
    schema = {"sqlite": "main", "duckdb": "main"}.get(any_warehouse.kind, any_warehouse.schema)
    if any_warehouse.kind == "postgres":  # another schema than the connection's search_path
        schema = f"{any_warehouse.schema}_ledger"
        any_warehouse.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        any_warehouse.execute(f"CREATE SCHEMA {schema}")
    ledger = warehouse_ledger(f"{schema}.kapture_ledger")
    try:
        ledger.create()
        ledger.create()  # idempotent
        ledger.record([Outcome("A-1", DELIVERED, "h", "n:1"), Outcome("B-2", OWED, "h", None, b"{}", "x")], NOW)
        assert set(ledger.lookup(["A-1", "B-2"])) == {"A-1", "B-2"}
        assert [p.order_id for p in ledger.owed_bodies(LATER)] == ["B-2"]
    finally:
        ledger.close()
    assert sorted(r[0] for r in any_warehouse.query(f"SELECT order_id FROM {schema}.kapture_ledger")) == ["A-1", "B-2"]
    if any_warehouse.kind == "postgres":
        any_warehouse.execute(f"DROP SCHEMA {schema} CASCADE")


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


def test_a_database_that_cannot_hold_the_ledger_is_refused_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    """An Oracle connection to a port where nothing listens: refused from the hook alone."""
    oracle = {"conn_type": "oracle", "host": "127.0.0.1", "port": 9, "login": "erp", "password": "x"}
    monkeypatch.setenv("AIRFLOW_CONN_ORACLE_LEDGER", json.dumps(oracle))
    with pytest.raises(LedgerNotSupported, match="cannot be kept in a 'oracle' database"):
        Ledger(BaseHook.get_connection("oracle_ledger").get_hook())


def test_shards_finishing_at_once_all_record_their_run(postgres_warehouse: Any) -> None:
    """The run log beside the ledger is created by whichever shard finishes first; the others find it."""
    from kapture_provider.sync.run_log import RunLog

    hook = BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook()
    start, end = dt.datetime(2026, 11, 26, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 26, 2, tzinfo=dt.UTC)

    def finish_at_once(run_id: str, shards: int) -> list[BaseException]:
        barrier, errors = threading.Barrier(shards), []

        def finish(shard: int) -> None:
            barrier.wait()
            try:
                RunLog(hook, "kapture_order_sync_ledger").record("dag", "sync", shard, run_id, start, end)
            except Exception as err:
                errors.append(err)

        threads = [threading.Thread(target=finish, args=(shard,)) for shard in range(shards)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return errors

    for attempt in range(5):
        postgres_warehouse.execute("DROP TABLE IF EXISTS kapture_order_sync_ledger_runs")
        assert finish_at_once(f"run-{attempt}", 4) == []
        assert postgres_warehouse.query("SELECT COUNT(*) FROM kapture_order_sync_ledger_runs") == [(4,)]


def test_sqlite_ledger_checkpoints_its_write_ahead_log_as_it_goes(sqlite_warehouse: Any) -> None:
    """SQLite's own checkpoint is off (it ran inside a commit, under the lock every sending thread waits
    on); the ledger's replaces it: the log is copied into the database every few hundred records and
    starts over, instead of growing with every order of the run."""
    ledger = warehouse_ledger()
    ledger.create()
    wal = sqlite_warehouse.path.with_name(sqlite_warehouse.path.name + "-wal")
    assert ledger.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for n in range(2010):
        ledger.record([Outcome(f"order-{n}", DELIVERED, "h", f"n:{n}")], NOW)
        if n == 0:
            before = wal.stat().st_size
        elif n == 10:
            one_commit = (wal.stat().st_size - before) / 10  # what one more order adds to the log

    assert wal.stat().st_size < 1000 * one_commit  # without checkpoints: over 2,000 times as much
    ledger.close()
    assert len(sqlite_warehouse.ledger()) == 2010


@given(st.datetimes(dt.datetime(1001, 1, 1), dt.datetime(9998, 12, 31), timezones=st.timezones()))
@settings(max_examples=300, deadline=None)
def test_ledger_times_are_utc_text_to_the_microsecond_that_reads_back(value: dt.datetime) -> None:
    """``time_text`` (isoformat, for speed) writes exactly what ``TIME_FORMAT`` describes, in UTC, for any
    aware time (four-digit years); a pendulum ``DateTime`` the same way; ``parse_time`` reads back the instant."""
    text = time_text(value)

    assert text == value.astimezone(dt.UTC).strftime(TIME_FORMAT)
    assert parse_time(text) == value.astimezone(dt.UTC)
    assert time_text(pendulum.instance(value.astimezone(dt.UTC)).in_timezone("Asia/Kolkata")) == text
