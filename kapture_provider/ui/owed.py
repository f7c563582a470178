"""The orders still owed to Kapture, read from a ledger table for the Kapture page: one read-only SELECT.

An order is owed when its last attempt failed (ledger status ``failed``): the next sync runs retry it.
Only the order id, the attempts, when it failed and the error are read — never ``pending_body``,
which holds the order's personal data until it is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.sync.ledger import _IDENTIFIER, FAILED

#: When the order started failing. ``failing_since`` (the first failed attempt since the last
#: delivery) is newer than some ledgers; without it, an order never delivered failed from its first sight.
_FIRST_FAILURE = "failing_since"
_FIRST_FAILURE_OLD_LEDGER = "CASE WHEN delivered_at IS NULL THEN first_seen_at END"


@dataclass(frozen=True)
class OwedOrder:
    """One order whose last attempt failed. No personal data: id, counts, times and Kapture's error."""

    order_id: str
    attempts: int
    first_failure: str | None  # UTC, as the ledger writes it; None when the ledger cannot tell
    last_failure: str
    last_error: str | None


@dataclass(frozen=True)
class OwedOrders:
    """How many orders are owed, and the ``limit`` the ledger has known longest."""

    total: int
    orders: list[OwedOrder]


def owed_orders(hook: DbApiHook, table: str, limit: int = 100) -> OwedOrders:
    """The orders owed to Kapture in the ledger ``table`` reached through ``hook``, oldest known first.

    Runs one ``SELECT`` (with the total counted by a window function) and writes nothing. A ledger
    written before the ``failing_since`` column existed is read too: the statement is then re-run
    with the first failure derived from the older columns.
    """
    if not _IDENTIFIER.match(table):
        raise ValueError(f"ledger table name {table!r} must be a plain SQL identifier")
    conn = hook.get_conn()
    try:
        try:
            rows = _select(conn, table, _FIRST_FAILURE, limit)
        except Exception:
            conn.rollback()
            rows = _select(conn, table, _FIRST_FAILURE_OLD_LEDGER, limit)
        conn.rollback()  # end the read transaction; nothing was written
    finally:
        conn.close()
    orders = [OwedOrder(str(r[0]), int(r[1]), r[2], r[3], r[4]) for r in rows]
    return OwedOrders(total=int(rows[0][5]) if rows else 0, orders=orders)


def _select(conn: Any, table: str, first_failure: str, limit: int) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    try:
        cur.execute(
            f"SELECT order_id, attempts, {first_failure} AS first_failure, last_attempt_at, last_error, "
            f"COUNT(*) OVER () AS owed FROM {table} WHERE status = '{FAILED}' "
            f"ORDER BY first_seen_at, order_id LIMIT {int(limit)}"
        )
        return [tuple(row) for row in cur.fetchall()]
    finally:
        cur.close()
