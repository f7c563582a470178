"""The ledger's store: what it knows of each order, read and written by the sync engine's threads.

One row per order id (table: :mod:`kapture_provider.sync.ledger_schema`; SQL per engine:
:mod:`kapture_provider.sync.ledger_sql`). The sending threads record their own results, each waiting
for its commit before it sends again (what bounds the orders resent after a kill); writes that arrive
while one is being committed go together into the next transaction (group commit).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.sync.dialect import SQLITE
from kapture_provider.sync.ledger_connection import WalCheckpoints, open_connection
from kapture_provider.sync.ledger_schema import (
    COLUMNS,
    DELIVERED_WRITES,
    NOT_DELIVERED_WRITES,
    create_table,
    table_columns,
)
from kapture_provider.sync.ledger_sql import ledger_dialect
from kapture_provider.sync.versions import is_older

#: The states an order has in the ledger (docs/glossary.md). An owed order's status is written ``failed``,
#: as ledgers have always stored it.
DELIVERED, OWED, PARKED, INVALID = "delivered", "failed", "parked", "invalid"
#: A ledger table name: a plain identifier, or ``schema.identifier``.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_LOOKUP_BATCH = 500
#: Ledgers of this process create their tables one at a time. A DuckDB file is open in one process only, so
#: this is all it takes there (its catalog refuses two creations at once); other engines' races across
#: processes are met by ``Ledger.create``'s second look.
_CREATING = threading.Lock()
_Method = TypeVar("_Method", bound=Callable[..., Any])


class LedgerEntry(NamedTuple):
    """What the ledger knows of one order (a tuple: one is built for every row a run compares)."""

    order_id: str
    status: str
    body_hash: str | None  # of the last delivered body
    version: str | None  # of the last delivered body
    pending_hash: str | None  # of the body still owed, when the last attempt failed
    pending_version: str | None
    refusals: int = 0  # Kapture's refusals in a row since the last delivery

    @property
    def newest_version(self) -> str | None:
        """The newest version this order has been sent with, delivered or still owed."""
        if self.pending_version is None or is_older(self.pending_version, self.version):
            return self.version
        return self.pending_version


class Outcome(NamedTuple):
    """The result of one attempt, as the ledger records it (a tuple: one is built for every order sent)."""

    order_id: str
    status: str
    body_hash: str | None = None
    version: str | None = None
    body: bytes | None = None  # kept only when not delivered (owed or parked)
    error: str | None = None
    transient: bool = False  # failed for a transient reason (Kapture down or overloaded); not stored
    refusals: int = 0  # Kapture's refusals in a row since the last delivery, this attempt included


@dataclass(frozen=True)
class OwedBody:
    """An owed order with the body still owed to Kapture (what a run resends)."""

    order_id: str
    data: bytes
    body_hash: str
    version: str | None
    refusals: int


@dataclass(frozen=True)
class OwedOrder:
    """An owed or a parked order, as listed. No personal data: id, counts, times and Kapture's error."""

    order_id: str
    status: str  # OWED (retried by every run) or PARKED
    attempts: int
    refusals: int
    failing_since: str | None  # UTC, as the ledger writes it
    last_attempt_at: str
    last_error: str | None


@dataclass(frozen=True)
class OwedSummary:
    """What the ledger still owes Kapture: orders retried by every run, and parked ones."""

    owed: int = 0
    oldest_failing_since: str | None = None  # of the owed orders
    max_attempts: int = 0  # of the owed orders
    parked: int = 0


#: At most 999 values bound per upsert: the limit of SQLite builds before 3.32 (RHEL 8's, say).
_ROWS_PER_STATEMENT = 999 // len(COLUMNS)


def _row_of(outcome: Outcome, now: str) -> tuple[bool, dict[str, Any]]:
    """The columns an outcome inserts for a new order (whether it was delivered, and the values)."""
    if outcome.status == DELIVERED:
        return True, {
            "order_id": outcome.order_id, "status": DELIVERED, "body_hash": outcome.body_hash,
            "version": outcome.version, "attempts": 1, "first_seen_at": now, "last_attempt_at": now,
            "delivered_at": now, "refusals": 0,
        }  # fmt: skip
    body = outcome.body.decode("utf-8") if outcome.body is not None else None
    return False, {
        "order_id": outcome.order_id, "status": outcome.status, "pending_body": body,
        "pending_hash": outcome.body_hash, "pending_version": outcome.version, "last_error": outcome.error,
        "attempts": 1, "first_seen_at": now, "last_attempt_at": now, "failing_since": now,
        "refusals": outcome.refusals,
    }  # fmt: skip


# -- the ledger ----------------------------------------------------------------------------------
def _serialized(method: _Method) -> _Method:
    """Run a :class:`Ledger` method holding the ledger's lock: its one connection serves every thread."""

    @functools.wraps(method)
    def locked(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(_Method, locked)


@dataclass
class _Write:
    """One :meth:`Ledger.record` call waiting for the commit that includes it."""

    rows: list[tuple[bool, dict[str, Any]]]
    done: bool = False
    error: BaseException | None = None


@dataclass
class _GroupCommit:
    """Writes queued while another thread commits, committed together by the next thread to write."""

    queued: list[_Write] = field(default_factory=list)
    writing: bool = False
    changed: threading.Condition = field(default_factory=threading.Condition)


class Ledger:
    """Reads and writes the ledger table through a common-sql ``DbApiHook``; safe to share between threads.

    :param hook: the ledger database's hook (SQLite, PostgreSQL, MySQL/MariaDB or DuckDB).
    :param table: the table, ``name`` or ``schema.name``; created if missing.
    :raises LedgerNotSupported: the hook's database cannot hold the ledger (decided without connecting).
    """

    def __init__(self, hook: DbApiHook, table: str = "kapture_order_sync_ledger"):
        if not _IDENTIFIER.match(table):
            raise ValueError(f"ledger table name {table!r} must be a plain SQL identifier, or schema.identifier")
        self.dialect = ledger_dialect(hook)
        self.hook = hook
        self.table = table
        self._conn: Any = None
        self._lock = threading.RLock()  # one thread at a time on the connection
        self._group = _GroupCommit()
        self._statements: dict[tuple[bool, tuple[str, ...], int], str] = {}
        self._checkpoints: WalCheckpoints | None = None

    @property
    def conn(self) -> Any:
        """The ledger's own connection (SQLite: switched to WAL, so open it before reading the warehouse)."""
        with self._lock:
            if self._conn is None:
                self._conn = open_connection(self.dialect.engine, self.hook)
                if self.dialect.engine == SQLITE:
                    self._checkpoints = WalCheckpoints(self._conn.execute("PRAGMA database_list").fetchone()[2])
            return self._conn

    def _rollback(self) -> None:
        with suppress(Exception):  # DuckDB refuses a rollback outside a transaction
            self.conn.rollback()

    @_serialized
    def exists(self) -> bool:
        """Whether the ledger table is there (dry runs never create it); a database that cannot tell raises."""
        return table_columns(self.conn, self.dialect, self.table) is not None

    @_serialized
    def create(self) -> None:
        """Create the table and its status index if missing, or bring an older one up to date.

        Safe when several shards start at once: PostgreSQL's ``CREATE … IF NOT EXISTS`` is not atomic, so
        the sessions racing the one that creates the table (or adds a column) fail ("already exists") as
        soon as it commits; they roll back and find everything there.
        """
        with _CREATING:
            try:
                create_table(self.conn, self.dialect, self.table)
            except Exception:
                self._rollback()
                if not self.exists():
                    raise
                create_table(self.conn, self.dialect, self.table)  # a no-op now, run so that a real error shows

    @_serialized
    def lookup(self, order_ids: Sequence[str]) -> dict[str, LedgerEntry]:
        """The ledger entries of these order ids (missing ids are new orders)."""
        found: dict[str, LedgerEntry] = {}
        binary_key, text = self.dialect.binary_key, self.dialect.text
        unique = list(dict.fromkeys(order_ids))
        with closing(self.conn.cursor()) as cur:
            for start in range(0, len(unique), _LOOKUP_BATCH):
                batch = unique[start : start + _LOOKUP_BATCH]
                marks = ", ".join([self.dialect.placeholder] * len(batch))
                cur.execute(
                    f"SELECT order_id, status, body_hash, version, pending_hash, pending_version, "
                    f"COALESCE(refusals, 0) FROM {self.table} WHERE order_id IN ({marks})",
                    batch,
                )
                for row in cur.fetchall():
                    entry = LedgerEntry(text(row[0]), *row[1:]) if binary_key else LedgerEntry(*row)
                    found[entry.order_id] = entry
        if not self.dialect.autocommit:
            self.conn.commit()  # end the read: MySQL would otherwise keep reading this snapshot
        return found

    def record(self, outcomes: Iterable[Outcome], now: str) -> None:
        """Write outcomes and return once they are committed (with any others queued meanwhile)."""
        write = _Write([_row_of(o, now) for o in outcomes])
        if not write.rows:
            return
        group = self._group
        with group.changed:
            group.queued.append(write)
            while not write.done:
                if group.writing:
                    group.changed.wait()
                    continue
                batch, group.queued, group.writing = group.queued, [], True
                error: BaseException | None = None
                group.changed.release()
                try:
                    self._write([row for w in batch for row in w.rows])
                except BaseException as err:
                    error = err
                finally:
                    group.changed.acquire()
                    for queued in batch:
                        queued.done, queued.error = True, error
                    group.writing = False
                    group.changed.notify_all()
        if write.error is not None:
            raise write.error
        if self._checkpoints is not None:
            self._checkpoints.committed()  # outside the lock: the other threads keep recording meanwhile

    @_serialized
    def _write(self, rows: Sequence[tuple[bool, dict[str, Any]]]) -> None:
        """Upsert ``rows`` in one transaction: each statement holds at most one row per order.

        A driver in autocommit mode is told ``BEGIN`` and ``COMMIT`` through the same cursor: a DuckDB
        cursor is a connection of its own, whose transaction the connection's ``commit()`` would not end.
        """
        statements = list(_statements(rows))
        explicit = self.dialect.autocommit and len(statements) > 1
        cur = self.conn.cursor()
        try:
            if explicit:
                cur.execute("BEGIN")
            for delivered, chunk in statements:
                columns = tuple(chunk[0])
                cur.execute(self._upsert(delivered, columns, len(chunk)), [row[c] for row in chunk for c in columns])
            if explicit:
                cur.execute("COMMIT")
            else:
                self.conn.commit()
        except BaseException:
            if explicit:
                with suppress(Exception):
                    cur.execute("ROLLBACK")
            self._rollback()  # leave no transaction open on the shared connection
            raise
        finally:
            cur.close()

    def _upsert(self, delivered: bool, columns: tuple[str, ...], rows: int) -> str:
        """The upsert statement for ``rows`` outcomes of one kind, built once per shape."""
        shape = (delivered, columns, rows)
        if shape not in self._statements:
            writes = DELIVERED_WRITES if delivered else NOT_DELIVERED_WRITES
            self._statements[shape] = self.dialect.upsert(self.table, columns, rows, writes)
        return self._statements[shape]

    def owed_bodies(self, attempted_before: str, batch_size: int = 1000) -> Iterator[OwedBody]:
        """The owed orders last attempted before ``attempted_before``, with their bodies."""
        after = ""
        while True:
            rows = self._owed_batch(attempted_before, after, batch_size)
            for order_id, body, body_hash, version, refusals in rows:
                yield OwedBody(order_id, body.encode("utf-8"), body_hash, version, refusals)
            if len(rows) < batch_size:
                return
            after = rows[-1][0]

    @_serialized
    def _owed_batch(self, attempted_before: str, after: str, batch_size: int) -> list[tuple[Any, ...]]:
        p = self.dialect.placeholder
        with closing(self.conn.cursor()) as cur:
            cur.execute(
                f"SELECT order_id, pending_body, pending_hash, pending_version, COALESCE(refusals, 0) "
                f"FROM {self.table} WHERE status = {p} AND last_attempt_at < {p} AND pending_body IS NOT NULL "
                f"AND order_id > {p} "
                f"ORDER BY order_id LIMIT {int(batch_size)}",
                (OWED, attempted_before, after),
            )
            rows = [(self.dialect.text(order_id), *rest) for order_id, *rest in cur.fetchall()]
        if not self.dialect.autocommit:
            self.conn.commit()
        return rows

    @_serialized
    def owed_summary(self, in_scope: Callable[[str], bool] | None = None) -> OwedSummary:
        """How many orders are owed (retried by every run) and parked, the oldest failure and most attempts;
        with ``in_scope``, of the orders it accepts only (a shard's own: the hash is worked out here)."""
        p = self.dialect.placeholder
        with closing(self.conn.cursor()) as cur:
            cur.execute(
                f"SELECT order_id, status, failing_since, attempts FROM {self.table} WHERE status IN ({p}, {p})",
                (OWED, PARKED),
            )
            found = cur.fetchall()
        text = self.dialect.text
        rows = [(text(r[1]), r[2], int(r[3] or 0)) for r in found if in_scope is None or in_scope(text(r[0]))]
        if not self.dialect.autocommit:
            self.conn.commit()
        owed = [(since, attempts) for status, since, attempts in rows if status == OWED]
        return OwedSummary(
            owed=len(owed),
            oldest_failing_since=min((since for since, _ in owed if since), default=None),
            max_attempts=max((attempts for _, attempts in owed), default=0),
            parked=len(rows) - len(owed),
        )

    @_serialized
    def owed_orders(self, limit: int = 100) -> list[OwedOrder]:
        """The owed and parked orders that have been failing longest (never their owed body)."""
        p = self.dialect.placeholder
        with closing(self.conn.cursor()) as cur:
            cur.execute(
                f"SELECT order_id, status, attempts, COALESCE(refusals, 0), failing_since, last_attempt_at, "
                f"last_error FROM {self.table} WHERE status IN ({p}, {p}) "
                f"ORDER BY failing_since, order_id LIMIT {int(limit)}",
                (OWED, PARKED),
            )
            rows = cur.fetchall()
        if not self.dialect.autocommit:
            self.conn.commit()
        text = self.dialect.text
        return [OwedOrder(text(r[0]), text(r[1]), int(r[2]), int(r[3]), r[4], r[5], r[6]) for r in rows]

    @_serialized
    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None


def _statements(rows: Sequence[tuple[bool, dict[str, Any]]]) -> Iterator[tuple[bool, list[dict[str, Any]]]]:
    """Consecutive rows of one kind, up to :data:`_ROWS_PER_STATEMENT`, with no order id twice.

    An upsert may not change one row twice (PostgreSQL and DuckDB refuse it); a later outcome of the
    same order goes into the next statement, so the last one wins.
    """
    chunk: list[dict[str, Any]] = []
    kind, ids = True, set[str]()
    for delivered, values in rows:
        if chunk and (delivered != kind or values["order_id"] in ids or len(chunk) >= _ROWS_PER_STATEMENT):
            yield kind, chunk
            chunk, ids = [], set()
        kind = delivered
        chunk.append(values)
        ids.add(values["order_id"])
    if chunk:
        yield kind, chunk
