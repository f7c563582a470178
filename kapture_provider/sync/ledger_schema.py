"""The ledger table, described once: its columns, what each outcome writes, and how it is created or migrated.

Each engine only spells it (:mod:`kapture_provider.sync.ledger_sql`).
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kapture_provider.sync.ledger_sql import LedgerDialect


@dataclass(frozen=True)
class Column:
    """A ledger column; ``kind`` is spelled per dialect (:attr:`LedgerDialect.types`)."""

    name: str
    kind: str  # key | status | hash | version | text | count | time
    required: bool = False  # NOT NULL (a column added to an existing ledger must not be)


COLUMNS = (
    Column("order_id", "key", required=True),
    Column("status", "status", required=True),
    Column("body_hash", "hash"),  # of the last delivered body
    Column("version", "version"),  # of the last delivered body
    Column("pending_body", "text"),  # the body still owed (owed and parked orders; cleared on delivery)
    Column("pending_hash", "hash"),
    Column("pending_version", "version"),
    Column("last_error", "text"),
    Column("attempts", "count", required=True),
    Column("first_seen_at", "time", required=True),
    Column("last_attempt_at", "time", required=True),
    Column("delivered_at", "time"),
    Column("failing_since", "time"),  # the first failed attempt since the last delivery
    Column("refusals", "count"),  # Kapture's refusals in a row since the last delivery
)

#: How an outcome changes a known order's columns (columns not named keep their value). A delivery without a
#: version (a full-table diff has no version column) keeps the version known: a later backfill stays checked.
NEW, CLEAR, INCREMENT, KEEP_FIRST, KEEP_KNOWN = "new", "clear", "increment", "keep first", "keep known"
DELIVERED_WRITES = {
    "status": NEW, "body_hash": NEW, "version": KEEP_KNOWN, "pending_body": CLEAR, "pending_hash": CLEAR,
    "pending_version": CLEAR, "last_error": CLEAR, "attempts": INCREMENT, "last_attempt_at": NEW,
    "delivered_at": NEW, "failing_since": CLEAR, "refusals": NEW,
}  # fmt: skip
NOT_DELIVERED_WRITES = {
    "status": NEW, "pending_body": NEW, "pending_hash": NEW, "pending_version": NEW, "last_error": NEW,
    "attempts": INCREMENT, "last_attempt_at": NEW, "failing_since": KEEP_FIRST, "refusals": NEW,
}  # fmt: skip


def table_columns(conn: Any, dialect: LedgerDialect, table: str) -> set[str] | None:
    """The ledger table's column names (lower case), or None when the database has no such table."""
    with closing(conn.cursor()) as cur:
        cur.execute(*dialect.table_exists(table))
        found = cur.fetchall()
        if not found:
            names = None
        else:
            cur.execute(f"SELECT * FROM {table} WHERE 1 = 0")
            names = {str(d[0]).lower() for d in cur.description}
            cur.fetchall()
    if not dialect.autocommit:
        conn.commit()  # end the read: MySQL would otherwise keep reading this snapshot
    return names


def create_table(conn: Any, dialect: LedgerDialect, table: str) -> None:
    """Create the table and its status index if missing, or bring an older one up to date."""
    with closing(conn.cursor()) as cur:
        for statement in dialect.create_table(table):
            cur.execute(statement)
    conn.commit()
    present = table_columns(conn, dialect, table) or set()
    with closing(conn.cursor()) as cur:
        for column in COLUMNS:
            if column.name not in present:
                cur.execute(dialect.add_column(table, column))
        dialect.migrate(cur, table)
    conn.commit()
