"""The change ledger: one row per order id, kept in a SQLite, PostgreSQL, MySQL/MariaDB or DuckDB database.

It remembers what was last *delivered* (body hash and version), the outcome of the last attempt
with its error, since when an order keeps failing (``failing_since``), and — for an order whose last
attempt failed — the encoded body still owed to Kapture (``pending_body``), so a later run of any
interval can deliver it without re-reading the warehouse. That column holds the order's personal
data until delivery succeeds; it is cleared then.

The database is recognised once, from the hook's ``dialect_name`` (:mod:`kapture_provider.sync.dialect`);
any other engine is refused before anything is read or sent. The table is described once
(:data:`COLUMNS`, and what each outcome writes: :data:`_DELIVERED_WRITES`, :data:`_FAILED_WRITES`);
each dialect only spells types and upserts. common-sql's ``Dialect.generate_replace_sql`` is not used:
it can only overwrite every column with the new row's value (``REPLACE INTO`` on MySQL and SQLite even
deletes the row first), while the ledger counts attempts, keeps ``first_seen_at`` and the first
``failing_since``, and clears the pending body on delivery; and common-sql has no MySQL or DuckDB dialect.

Order ids are keys compared byte for byte on every engine: on MySQL/MariaDB the key is ``VARBINARY``,
since every text collation there either ignores case or trailing spaces.

The sync engine's sending threads record their own results, each waiting for its commit before it
sends again (what bounds the orders resent after a kill). Writes that arrive while one is being
committed are committed together in the next transaction (group commit), so the cost per order falls
as concurrency rises, on every engine.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, NamedTuple, TypeVar, cast

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.sync.dialect import (
    DUCKDB,
    LEDGER_DATABASES,
    LEDGER_DRIVERS,
    MYSQL,
    POSTGRES,
    SQLITE,
    driver_name,
    engine_of,
)

log = logging.getLogger(__name__)
DELIVERED, FAILED, INVALID = "delivered", "failed", "invalid"
#: Refused too many times in a row: kept with its body, listed, no longer retried until its row changes.
PARKED = "parked"
#: A ledger table name: a plain identifier, or ``schema.identifier``.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_LOOKUP_BATCH = 500
_Method = TypeVar("_Method", bound=Callable[..., Any])


def encode_version(value: Any) -> str | None:
    """A version value (number, datetime, date or text) as text whose order :func:`version_key` restores."""
    if value is None:
        return None
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int | float | Decimal):
        return f"n:{value}"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return "t:" + value.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, dt.date):
        return "t:" + dt.datetime(value.year, value.month, value.day).isoformat(sep=" ", timespec="microseconds")
    text = str(value)  # a lone surrogate (no database stores one) is escaped so that the ledger can store it
    text = text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"s:{text}"[:255]  # the width of the version columns; longer texts compare by their start


def version_key(encoded: str) -> tuple[int, Any]:
    """Sort key of an encoded version; numbers compare as numbers, times and text as text."""
    kind, _, text = encoded.partition(":")
    if kind == "n":
        return (0, Decimal(text))
    return (1, text) if kind == "t" else (2, text)


def is_older(version: str | None, than: str | None) -> bool:
    """True when ``version`` is strictly older than ``than`` (unknown versions are never older)."""
    if version is None or than is None:
        return False
    try:
        return version_key(version) < version_key(than)
    except ArithmeticError:  # a NaN version (decimal.InvalidOperation) orders nothing: unknown
        return False


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
    body: bytes | None = None  # kept only when the attempt failed
    error: str | None = None
    transient: bool = False  # failed for a transient reason (Kapture down or overloaded); not stored
    refusals: int = 0  # Kapture's refusals in a row since the last delivery, this attempt included


@dataclass(frozen=True)
class PendingOrder:
    """An order whose last attempt failed, with the body still owed to Kapture."""

    order_id: str
    data: bytes
    body_hash: str
    version: str | None
    refusals: int


@dataclass(frozen=True)
class OwedOrder:
    """An order still owed to Kapture (or parked). No personal data: id, counts, times and Kapture's error."""

    order_id: str
    status: str  # failed (retried by every run) or parked
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


class LedgerNotSupported(ValueError):
    """The ledger's connection is not a database the ledger can live in."""


# -- the table, described once -------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """A ledger column; ``kind`` is spelled per dialect (:attr:`LedgerDialect.types`)."""

    name: str
    kind: str  # key | status | hash | version | text | count | time
    required: bool = False  # NOT NULL (a column added to an existing ledger must not be)


COLUMNS = (
    Column("order_id", "key", required=True),
    Column("status", "status", required=True),
    Column("body_hash", "hash"),
    Column("version", "version"),
    Column("pending_body", "text"),
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
#: At most 999 values bound per upsert: the limit of SQLite builds before 3.32 (RHEL 8's, say).
_ROWS_PER_STATEMENT = 999 // len(COLUMNS)

#: How an outcome changes a known order's columns (columns not named keep their value). A delivery without a
#: version (a full-table diff has no version column) keeps the version known: a later backfill stays checked.
NEW, CLEAR, INCREMENT, KEEP_FIRST, KEEP_KNOWN = "new", "clear", "increment", "keep first", "keep known"
_DELIVERED_WRITES = {
    "status": NEW, "body_hash": NEW, "version": KEEP_KNOWN, "pending_body": CLEAR, "pending_hash": CLEAR,
    "pending_version": CLEAR, "last_error": CLEAR, "attempts": INCREMENT, "last_attempt_at": NEW,
    "delivered_at": NEW, "failing_since": CLEAR, "refusals": NEW,
}  # fmt: skip
_FAILED_WRITES = {
    "status": NEW, "pending_body": NEW, "pending_hash": NEW, "pending_version": NEW, "last_error": NEW,
    "attempts": INCREMENT, "last_attempt_at": NEW, "failing_since": KEEP_FIRST, "refusals": NEW,
}  # fmt: skip


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


# -- dialects: types and upsert spelling -----------------------------------------------------------
class LedgerDialect:
    """SQLite, PostgreSQL and DuckDB: ``INSERT … ON CONFLICT (order_id) DO UPDATE``."""

    engine: ClassVar[str]
    placeholder: ClassVar[str] = "%s"
    #: the driver runs each statement in its own transaction unless told ``BEGIN``
    autocommit: ClassVar[bool] = False
    status_index: ClassVar[bool] = True
    #: order ids come back as bytes (MySQL's VARBINARY key)
    binary_key: ClassVar[bool] = False
    types: ClassVar[dict[str, str]] = {
        "key": "VARCHAR(255)", "status": "VARCHAR(16)", "hash": "VARCHAR(64)", "version": "VARCHAR(255)",
        "text": "TEXT", "count": "INTEGER", "time": "VARCHAR(32)",
    }  # fmt: skip
    table_options: ClassVar[str] = ""
    _ALIAS = "kapture_ledger"

    def column_sql(self, column: Column) -> str:
        sql = f"{column.name} {self.types[column.kind]}"
        if column.kind == "count":
            sql += " DEFAULT 0"
        if column.required:
            sql += " NOT NULL"
        return sql + (" PRIMARY KEY" if column.kind == "key" else "")

    def create_table(self, table: str) -> list[str]:
        body = ",\n    ".join(self.column_sql(c) for c in COLUMNS)
        statements = [f"CREATE TABLE IF NOT EXISTS {table} (\n    {body}\n){self.table_options}"]
        if self.status_index:
            schema, _, name = table.rpartition(".")
            statements.append(self.index_sql(schema, name))
        return statements

    def index_sql(self, schema: str, name: str) -> str:
        table = f"{schema}.{name}" if schema else name
        return f"CREATE INDEX IF NOT EXISTS {name}_status_idx ON {table} (status, last_attempt_at)"

    def add_column(self, table: str, column: Column) -> str:
        return f"ALTER TABLE {table} ADD COLUMN {self.column_sql(column)}"

    def migrate(self, cur: Any, table: str) -> None:
        """Bring an existing table's column types up to date (beyond adding missing columns)."""

    #: what follows the VALUES of an upsert, before its assignments
    on_conflict: ClassVar[str] = "ON CONFLICT (order_id) DO UPDATE SET"

    def upsert(self, table: str, columns: Sequence[str], rows: int, writes: dict[str, str]) -> str:
        values = ", ".join(["(" + ", ".join([self.placeholder] * len(columns)) + ")"] * rows)
        sets = ", ".join(f"{name} = {self.expression(name, how)}" for name, how in writes.items())
        return f"INSERT INTO {self.target(table)} ({', '.join(columns)}) VALUES {values} {self.on_conflict} {sets}"

    def target(self, table: str) -> str:
        """The table an upsert names, aliased so that its assignments can read the existing row."""
        return f"{table} AS {self._ALIAS}"

    def expression(self, name: str, how: str) -> str:
        return {
            NEW: f"excluded.{name}",
            CLEAR: "NULL",
            INCREMENT: f"{self._ALIAS}.{name} + 1",
            KEEP_FIRST: f"COALESCE({self._ALIAS}.{name}, excluded.{name})",
            KEEP_KNOWN: f"COALESCE(excluded.{name}, {self._ALIAS}.{name})",
        }[how]

    def connect(self, hook: DbApiHook) -> Any:
        return hook.get_conn()

    @staticmethod
    def text(value: Any) -> Any:
        """A value read back from the table: a binary string (MySQL's key, its information schema) as text."""
        return bytes(value).decode("utf-8") if isinstance(value, bytes | bytearray | memoryview) else value


class SqliteLedger(LedgerDialect):
    engine = SQLITE
    placeholder = "?"
    autocommit = True

    def index_sql(self, schema: str, name: str) -> str:  # SQLite names the index's schema, not the table's
        index = f"{schema}.{name}_status_idx" if schema else f"{name}_status_idx"
        return f"CREATE INDEX IF NOT EXISTS {index} ON {name} (status, last_attempt_at)"

    def connect(self, hook: DbApiHook) -> Any:
        """Reopened so that other threads may use it, in WAL mode without an fsync per commit, in autocommit.

        WAL lets the warehouse be read while the ledger is written; an OS crash may undo the last
        commits (those orders are sent again; nothing is corrupted).
        """
        conn = hook.get_conn()
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        conn.close()
        if not path:
            raise ValueError("the ledger needs a SQLite database file: an in-memory database is gone after the task")
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)  # one thread at a time: the lock
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # _WalCheckpoints runs them, outside the ledger's lock
        return conn


class PostgresLedger(LedgerDialect):
    engine = POSTGRES

    def connect(self, hook: DbApiHook) -> Any:
        """``synchronous_commit`` off for this session: a server crash may forget the last fraction of a
        second of commits (those orders are sent again); nothing is corrupted."""
        conn = hook.get_conn()
        with closing(conn.cursor()) as cur:
            cur.execute("SET synchronous_commit TO OFF")
        conn.commit()
        return conn


class DuckDbLedger(LedgerDialect):
    engine = DUCKDB
    placeholder = "?"
    autocommit = True
    status_index = False  # a column scan is fast, and DuckDB updates an indexed column as delete + insert


class MySqlLedger(LedgerDialect):
    """MySQL and MariaDB: ``INSERT … ON DUPLICATE KEY UPDATE`` (``VALUES()``: MariaDB has no row alias)."""

    engine = MYSQL
    binary_key = True
    types = {**LedgerDialect.types, "key": "VARBINARY(1020)", "text": "MEDIUMTEXT"}  # 255 characters in UTF-8
    status_index = False  # declared in the table: MySQL has no CREATE INDEX IF NOT EXISTS
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

    def create_table(self, table: str) -> list[str]:
        index = "INDEX kapture_status_idx (status, last_attempt_at)"
        body = ",\n    ".join([*(self.column_sql(c) for c in COLUMNS), index])
        return [f"CREATE TABLE IF NOT EXISTS {table} (\n    {body}\n){self.table_options}"]

    def migrate(self, cur: Any, table: str) -> None:
        """A ledger created before 0.2 has a case-insensitive text key and 64 kB texts: make them exact and large."""
        schema, _, name = table.rpartition(".")
        cur.execute(
            "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) "
            "AND TABLE_NAME = %s AND COLUMN_NAME = 'order_id'",
            (schema or None, name),
        )
        found = cur.fetchall()
        if found and self.text(found[0][0]).lower() != "varbinary":
            exact = [c for c in COLUMNS if c.kind in ("key", "text")]
            changes = [f"MODIFY {self.column_sql(c).replace(' PRIMARY KEY', '')}" for c in exact]
            cur.execute(f"ALTER TABLE {table} {', '.join(changes)}")

    on_conflict = "ON DUPLICATE KEY UPDATE"

    def target(self, table: str) -> str:
        return table  # MariaDB has no row alias: the assignments read the existing row by bare name

    def expression(self, name: str, how: str) -> str:
        return {
            NEW: f"VALUES({name})",
            CLEAR: "NULL",
            INCREMENT: f"{name} + 1",
            KEEP_FIRST: f"COALESCE({name}, VALUES({name}))",
            KEEP_KNOWN: f"COALESCE(VALUES({name}), {name})",
        }[how]

    def connect(self, hook: DbApiHook) -> Any:
        conn = hook.get_conn()
        with closing(conn.cursor()) as cur:  # never autocommit: a batch of results is one transaction
            cur.execute("SET SESSION autocommit = 0")
        return conn


_DIALECTS: dict[str, type[LedgerDialect]] = {
    d.engine: d for d in (SqliteLedger, PostgresLedger, MySqlLedger, DuckDbLedger)
}


def ledger_dialect(hook: DbApiHook) -> LedgerDialect:
    """The ledger dialect of ``hook``'s database; :class:`LedgerNotSupported` for any other engine.

    Decided from the hook alone: nothing is connected to, read or sent before.
    """
    engine = engine_of(hook)
    if engine not in _DIALECTS:
        raise LedgerNotSupported(
            f"the change ledger cannot be kept in a {engine!r} database (connection {hook.get_conn_id()!r}); "
            f"it needs {LEDGER_DATABASES}"
        )
    return _DIALECTS[engine]()


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
        self._checkpoints: _WalCheckpoints | None = None

    @property
    def conn(self) -> Any:
        """The ledger's own connection (SQLite: switched to WAL, so open it before reading the warehouse)."""
        with self._lock:
            if self._conn is None:
                conn = self.dialect.connect(self.hook)
                if driver_name(conn) not in LEDGER_DRIVERS[self.dialect.engine]:
                    conn.close()
                    raise LedgerNotSupported(
                        f"the change ledger cannot be kept through the {driver_name(conn)!r} driver of connection "
                        f"{self.hook.get_conn_id()!r}; it needs {LEDGER_DATABASES}"
                    )
                self._conn = conn
                if self.dialect.engine == SQLITE:
                    self._checkpoints = _WalCheckpoints(conn.execute("PRAGMA database_list").fetchone()[2])
            return self._conn

    def _rollback(self) -> None:
        with suppress(Exception):  # DuckDB refuses a rollback outside a transaction
            self.conn.rollback()

    @_serialized
    def exists(self) -> bool:
        """Whether the ledger table is there (dry runs never create it)."""
        return self._columns() is not None

    def _columns(self) -> set[str] | None:
        cur = self.conn.cursor()
        try:
            cur.execute(f"SELECT * FROM {self.table} WHERE 1 = 0")
            names = {str(d[0]).lower() for d in cur.description}
            cur.fetchall()
            return names
        except Exception:
            self._rollback()
            return None
        finally:
            cur.close()

    @_serialized
    def create(self) -> None:
        """Create the table and its status index if missing, or bring an older one up to date.

        Safe when several shards start at once: PostgreSQL's ``CREATE … IF NOT EXISTS`` is not atomic, so
        the sessions racing the one that creates the table (or adds a column) fail ("already exists") as
        soon as it commits; they roll back and find everything there.
        """
        try:
            self._create_objects()
        except Exception:
            self._rollback()
            if not self.exists():
                raise
            self._create_objects()  # a no-op now, run so that a real error is not hidden

    def _create_objects(self) -> None:
        with closing(self.conn.cursor()) as cur:
            for statement in self.dialect.create_table(self.table):
                cur.execute(statement)
        self.conn.commit()
        present = self._columns() or set()
        with closing(self.conn.cursor()) as cur:
            for column in COLUMNS:
                if column.name not in present:
                    cur.execute(self.dialect.add_column(self.table, column))
            self.dialect.migrate(cur, self.table)
        self.conn.commit()

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
            writes = _DELIVERED_WRITES if delivered else _FAILED_WRITES
            self._statements[shape] = self.dialect.upsert(self.table, columns, rows, writes)
        return self._statements[shape]

    def pending(self, attempted_before: str, batch_size: int = 1000) -> Iterator[PendingOrder]:
        """Orders whose last attempt failed before ``attempted_before`` and that still owe a body."""
        after = ""
        while True:
            rows = self._pending_batch(attempted_before, after, batch_size)
            for order_id, body, body_hash, version, refusals in rows:
                yield PendingOrder(order_id, body.encode("utf-8"), body_hash, version, refusals)
            if len(rows) < batch_size:
                return
            after = rows[-1][0]

    @_serialized
    def _pending_batch(self, attempted_before: str, after: str, batch_size: int) -> list[tuple[Any, ...]]:
        p = self.dialect.placeholder
        with closing(self.conn.cursor()) as cur:
            cur.execute(
                f"SELECT order_id, pending_body, pending_hash, pending_version, COALESCE(refusals, 0) "
                f"FROM {self.table} WHERE status = {p} AND last_attempt_at < {p} AND pending_body IS NOT NULL "
                f"AND order_id > {p} "
                f"ORDER BY order_id LIMIT {int(batch_size)}",
                (FAILED, attempted_before, after),
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
                (FAILED, PARKED),
            )
            found = cur.fetchall()
        text = self.dialect.text
        rows = [(text(r[1]), r[2], int(r[3] or 0)) for r in found if in_scope is None or in_scope(text(r[0]))]
        if not self.dialect.autocommit:
            self.conn.commit()
        owed = [(since, attempts) for status, since, attempts in rows if status == FAILED]
        return OwedSummary(
            owed=len(owed),
            oldest_failing_since=min((since for since, _ in owed if since), default=None),
            max_attempts=max((attempts for _, attempts in owed), default=0),
            parked=len(rows) - len(owed),
        )

    @_serialized
    def owed_orders(self, limit: int = 100) -> list[OwedOrder]:
        """The owed and parked orders that have been failing longest (never their pending body)."""
        p = self.dialect.placeholder
        with closing(self.conn.cursor()) as cur:
            cur.execute(
                f"SELECT order_id, status, attempts, COALESCE(refusals, 0), failing_since, last_attempt_at, "
                f"last_error FROM {self.table} WHERE status IN ({p}, {p}) "
                f"ORDER BY failing_since, order_id LIMIT {int(limit)}",
                (FAILED, PARKED),
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


class _WalCheckpoints:
    """Copies the SQLite ledger's write-ahead log into the database file every ``every`` records.

    SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages: 5-15 ms with two
    fsyncs, while the ledger's lock holds every sending thread (measured every ~0.9 s at 300 orders/s).
    Here the thread whose record is due runs a passive checkpoint on a connection of its own once its
    commit is done, outside that lock, so the others keep recording; a checkpoint already running is not
    waited for.
    """

    def __init__(self, path: str, every: int = 250):
        self._path = path
        self._every = every
        self._records = itertools.count(1)
        self._running = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def committed(self) -> None:
        if next(self._records) % self._every or not self._running.acquire(blocking=False):
            return
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as err:  # nothing is lost: the commits are in the WAL, and the next one retries
            log.warning("SQLite ledger: WAL checkpoint failed (%s); retried after the next commits", err)
        finally:
            self._running.release()

    def close(self) -> None:
        with self._running:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


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
