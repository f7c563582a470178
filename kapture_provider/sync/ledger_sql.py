"""How each engine spells the ledger's SQL: column types, creating and migrating the table, the upsert.

SQLite, PostgreSQL and DuckDB write ``INSERT … ON CONFLICT (order_id) DO UPDATE``; MySQL/MariaDB
``INSERT … ON DUPLICATE KEY UPDATE``. common-sql's ``Dialect.generate_replace_sql`` is not used: it can
only overwrite every column with the new row's value (``REPLACE INTO`` on MySQL and SQLite even deletes
the row first), while the ledger counts attempts, keeps ``first_seen_at`` and the first ``failing_since``
and clears the owed body on delivery; and common-sql has no MySQL or DuckDB dialect. Order ids are
compared byte for byte on every engine: on MySQL/MariaDB the key is ``VARBINARY``, since every text
collation there either ignores case or trailing spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.sync.dialect import DUCKDB, LEDGER_DATABASES, MYSQL, POSTGRES, SQLITE, engine_of
from kapture_provider.sync.ledger_schema import CLEAR, COLUMNS, INCREMENT, KEEP_FIRST, KEEP_KNOWN, NEW, Column


class LedgerNotSupported(ValueError):
    """The ledger's connection is not a database the ledger can live in."""


class LedgerDialect:
    """The spelling shared by SQLite, PostgreSQL and DuckDB; each engine says how it finds a table."""

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

    def table_exists(self, table: str) -> tuple[str, tuple[Any, ...]]:
        """A query returning a row when ``table`` exists (an error means the database could not tell)."""
        raise NotImplementedError

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

    def table_exists(self, table: str) -> tuple[str, tuple[Any, ...]]:
        schema, _, name = table.rpartition(".")
        catalog = f"{schema}.sqlite_master" if schema else "sqlite_master"
        return f"SELECT 1 FROM {catalog} WHERE type = 'table' AND lower(name) = lower(?)", (name,)


class PostgresLedger(LedgerDialect):
    engine = POSTGRES

    def table_exists(self, table: str) -> tuple[str, tuple[Any, ...]]:
        return "SELECT 1 WHERE to_regclass(%s) IS NOT NULL", (table,)


class DuckDbLedger(LedgerDialect):
    engine = DUCKDB
    placeholder = "?"
    autocommit = True
    status_index = False  # a column scan is fast, and DuckDB updates an indexed column as delete + insert

    def table_exists(self, table: str) -> tuple[str, tuple[Any, ...]]:
        schema, _, name = table.rpartition(".")
        return (
            "SELECT 1 FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_schema = COALESCE(?, current_schema()) AND lower(table_name) = lower(?)",
            (schema or None, name),
        )


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

    def table_exists(self, table: str) -> tuple[str, tuple[Any, ...]]:
        schema, _, name = table.rpartition(".")
        return (
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
            (schema or None, name),
        )

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
