"""What an operator does to a ledger from the Kapture page: look up one order, retry parked orders.

A retry makes a parked order owed again (status ``failed``, its refusals in a row back to 0), so the next
run sends the body it still owes; each retry is recorded in ``<ledger table>_actions`` (who, when, which
order). :func:`dags_using` reads which DAGs recorded runs in the ledger's run log, so that the page can
tell a ledger shared by several DAGs. No personal data is read: never the pending body.
"""

from __future__ import annotations

import datetime as dt
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from kapture_provider.sync.dialect import MYSQL, SQLITE
from kapture_provider.sync.ledger import OWED, PARKED, Ledger
from kapture_provider.sync.times import time_text

RETRY = "retry"


@dataclass(frozen=True)
class OrderRecord:
    """One order as the ledger knows it, without its body (no personal data)."""

    order_id: str
    status: str  # delivered, failed (owed), parked or invalid
    attempts: int
    refusals: int  # Kapture's refusals in a row since the last delivery
    last_error: str | None
    first_seen_at: str
    last_attempt_at: str
    delivered_at: str | None  # the last delivery (UTC)
    failing_since: str | None
    last_retry_by: str | None  # the last operator who retried it from the page, and when
    last_retry_at: str | None


def actions_table(ledger: Ledger) -> str:
    """The table recording operators' actions on ``ledger``."""
    return f"{ledger.table}_actions"


def find_order(ledger: Ledger, order_id: str) -> OrderRecord | None:
    """The ledger's record of ``order_id``, or None when the ledger has never seen it."""
    p, text = ledger.dialect.placeholder, ledger.dialect.text
    with closing(ledger.conn.cursor()) as cur:
        cur.execute(
            f"SELECT order_id, status, attempts, COALESCE(refusals, 0), last_error, first_seen_at, last_attempt_at, "
            f"delivered_at, failing_since FROM {ledger.table} WHERE order_id = {p}",
            (order_id,),
        )
        row = cur.fetchone()
        cur.fetchall()
    last_retry = _last_action(ledger, order_id) if row else None
    _end_read(ledger)
    if row is None:
        return None
    by, at = last_retry or (None, None)
    last_error, first_seen_at, last_attempt_at, delivered_at, failing_since = row[4:9]
    return OrderRecord(
        text(row[0]), text(row[1]), int(row[2] or 0), int(row[3]), last_error, first_seen_at, last_attempt_at,
        delivered_at, failing_since, by, at,
    )  # fmt: skip


def retry_parked(ledger: Ledger, actor: str, order_id: str | None = None) -> list[str]:
    """Make the parked order ``order_id`` (None: every parked order) owed again; returns the ids retried.

    Recorded in :func:`actions_table` with ``actor`` and the time, in the same transaction.
    """
    dialect, p = ledger.dialect, ledger.dialect.placeholder
    where = f"status = {p}" + ("" if order_id is None else f" AND order_id = {p}")
    parameters: tuple[Any, ...] = (PARKED,) if order_id is None else (PARKED, order_id)
    now = time_text(dt.datetime.now(dt.UTC))
    _create_actions(ledger)
    cur = ledger.conn.cursor()
    try:
        if dialect.autocommit:
            cur.execute("BEGIN")
        cur.execute(f"SELECT order_id FROM {ledger.table} WHERE {where}", parameters)
        retried = [dialect.text(row[0]) for row in cur.fetchall()]
        if retried:
            cur.execute(f"UPDATE {ledger.table} SET status = {p}, refusals = 0 WHERE {where}", (OWED, *parameters))
            cur.executemany(
                f"INSERT INTO {actions_table(ledger)} (acted_at, actor, action, order_id) VALUES ({p}, {p}, {p}, {p})",
                [(now, actor, RETRY, retried_id) for retried_id in retried],
            )
        if dialect.autocommit:
            cur.execute("COMMIT")
        else:
            ledger.conn.commit()
    except BaseException:
        if dialect.autocommit:
            cur.execute("ROLLBACK")
        else:
            ledger.conn.rollback()
        raise
    finally:
        cur.close()
    return retried


def dags_using(ledger: Ledger) -> set[str]:
    """The DAGs whose sync tasks recorded a run in the ledger's run log (``<ledger table>_runs``)."""
    with closing(ledger.conn.cursor()) as cur:
        if not _table_exists(ledger, cur, f"{ledger.table}_runs"):
            return set()
        cur.execute(f"SELECT DISTINCT dag_id FROM {ledger.table}_runs")
        found = {str(ledger.dialect.text(row[0])) for row in cur.fetchall()}
    _end_read(ledger)
    return found


def _last_action(ledger: Ledger, order_id: str) -> tuple[str, str] | None:
    p = ledger.dialect.placeholder
    with closing(ledger.conn.cursor()) as cur:
        if not _table_exists(ledger, cur, actions_table(ledger)):
            return None
        cur.execute(
            f"SELECT actor, acted_at FROM {actions_table(ledger)} WHERE order_id = {p} AND action = {p} "
            "ORDER BY acted_at DESC LIMIT 1",
            (order_id, RETRY),
        )
        row = cur.fetchone()
        cur.fetchall()
    return (str(row[0]), str(row[1])) if row else None


def _create_actions(ledger: Ledger) -> None:
    """Create the actions table if missing (a second page creating it at once finds it there)."""
    key, autocommit = ledger.dialect.types["key"], ledger.dialect.autocommit
    with closing(ledger.conn.cursor()) as cur:
        if _table_exists(ledger, cur, actions_table(ledger)):
            return
        try:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {actions_table(ledger)} (acted_at VARCHAR(32) NOT NULL, "
                f"actor VARCHAR(250) NOT NULL, action VARCHAR(16) NOT NULL, order_id {key} NOT NULL)"
            )
            if not autocommit:
                ledger.conn.commit()
        except Exception:
            if not autocommit:
                ledger.conn.rollback()
            if not _table_exists(ledger, cur, actions_table(ledger)):
                raise


def _table_exists(ledger: Ledger, cur: Any, table: str) -> bool:
    """Whether ``table`` (``name`` or ``schema.name``) is there, from the database's catalog."""
    schema, _, name = table.rpartition(".")
    p, engine = ledger.dialect.placeholder, ledger.dialect.engine
    if engine == SQLITE:
        catalog = f"{schema}.sqlite_master" if schema else "sqlite_master"
        cur.execute(f"SELECT 1 FROM {catalog} WHERE type = 'table' AND LOWER(name) = LOWER({p})", (name,))
    else:
        current = "DATABASE()" if engine == MYSQL else "current_schema()"
        cur.execute(
            f"SELECT 1 FROM information_schema.tables WHERE LOWER(table_name) = LOWER({p}) "
            f"AND table_schema = COALESCE({p}, {current})",
            (name, schema or None),
        )
    return bool(cur.fetchall())


def _end_read(ledger: Ledger) -> None:
    if not ledger.dialect.autocommit:
        ledger.conn.commit()  # end the read: MySQL would otherwise keep reading this snapshot
