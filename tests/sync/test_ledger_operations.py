"""The Kapture page's ledger operations (:mod:`kapture_provider.sync.operations`) on every ledger engine."""

from __future__ import annotations

import datetime as dt

import pytest

from kapture_provider.compat import BaseHook
from kapture_provider.sync.ledger import DELIVERED, OWED, PARKED, Ledger, Outcome
from kapture_provider.sync.operations import actions_table, dags_using, find_order, retry_parked
from kapture_provider.sync.run_log import RunLog
from kapture_provider.sync.times import time_text

pytestmark = pytest.mark.integration

TABLE = "kapture_order_sync_ledger"


@pytest.fixture
def ledger(any_warehouse):  # type: ignore[no-untyped-def]
    ledger = Ledger(BaseHook.get_connection(any_warehouse.conn_id).get_hook(), TABLE)
    ledger.create()
    yield ledger
    ledger.close()
    any_warehouse.execute(f"DROP TABLE IF EXISTS {actions_table(ledger)}")


def test_retry_makes_a_parked_order_owed_and_records_who_and_when(ledger: Ledger) -> None:
    now = time_text(dt.datetime.now(dt.UTC))
    ledger.record(
        [
            Outcome("A1", DELIVERED, body_hash="h1", version="n:1"),
            Outcome("P1", PARKED, body_hash="h2", body=b'{"x": 1}', error="Order Updation Failed", refusals=3),
            Outcome("P2", PARKED, body_hash="h3", body=b'{"x": 2}', error="Order Updation Failed", refusals=3),
        ],
        now,
    )
    assert find_order(ledger, "P1") is not None and find_order(ledger, "P1").last_retry_by is None  # type: ignore[union-attr]

    assert retry_parked(ledger, "carol", "P1") == ["P1"]
    assert retry_parked(ledger, "carol", "P1") == []  # no longer parked
    assert retry_parked(ledger, "carol", "A1") == []  # a delivered order is not touched

    record = find_order(ledger, "P1")
    assert record is not None
    assert (record.status, record.refusals, record.last_retry_by) == (OWED, 0, "carol")
    assert record.last_retry_at is not None and record.last_retry_at >= now
    assert record.last_error == "Order Updation Failed" and record.attempts == 1
    assert [
        p.order_id
        for p in ledger.owed_bodies(attempted_before=time_text(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)))
    ] == ["P1"]  # owed again: the next run sends it

    assert retry_parked(ledger, "dave") == ["P2"]  # every parked order
    assert find_order(ledger, "P2").last_retry_by == "dave"  # type: ignore[union-attr]
    delivered = find_order(ledger, "A1")
    assert delivered is not None and delivered.status == DELIVERED and delivered.delivered_at == now
    assert find_order(ledger, "nope") is None


def test_dags_using_a_ledger_come_from_its_run_log(ledger: Ledger) -> None:
    assert dags_using(ledger) == set()
    start = dt.datetime(2026, 11, 26, 1, tzinfo=dt.UTC)
    run_log = RunLog(ledger.hook, TABLE)
    for dag_id in ("sales_sync", "ops_sync", "sales_sync"):
        run_log.record(dag_id, "sync", -1, "r", start, start + dt.timedelta(hours=1))
    assert dags_using(ledger) == {"sales_sync", "ops_sync"}
