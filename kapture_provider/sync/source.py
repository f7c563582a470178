"""Stream rows out of any common-sql connection, in chunks, with bound parameters."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, suppress
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook

Parameters = Mapping[str, Any] | Sequence[Any] | None


def driver_name(conn: Any) -> str:
    """The DB-API module behind a connection: ``sqlite3``, ``psycopg``, ``psycopg2``…"""
    return type(conn).__module__.split(".")[0]


def driver_paramstyle(conn: Any) -> str:
    """The DB-API ``paramstyle`` of the module behind a connection (``qmark``, ``pyformat``…)."""
    return getattr(sys.modules.get(driver_name(conn)), "paramstyle", "qmark")


def adapt_named_placeholders(sql: str, parameters: Parameters, paramstyle: str) -> str:
    """Let one query run on every driver: named parameters may be written ``:name`` or ``%(name)s``.

    Only the names present in ``parameters`` are rewritten, into the style the driver binds; values
    are never formatted into the SQL.
    """
    if not isinstance(parameters, Mapping) or not parameters:
        return sql
    names = "|".join(re.escape(str(k)) for k in sorted(parameters, key=len, reverse=True))
    if paramstyle in ("pyformat", "format"):
        return re.sub(rf"(?<![:\w]):({names})\b", r"%(\1)s", sql)
    if paramstyle in ("named", "qmark", "numeric"):  # sqlite3 binds :name whatever its paramstyle says
        return re.sub(rf"%\(({names})\)s", r":\1", sql)
    return sql


def quote_identifier(name: str) -> str:
    """Double-quote a column name (dotted aliases like ``order_info.order_id`` need it)."""
    return '"' + name.replace('"', '""') + '"'


def strip_sql(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def _execute(cur: Any, sql: str, parameters: Parameters) -> None:
    """Run ``sql``; without parameters none are passed, so a literal ``%`` (``LIKE 'P%'``) is no placeholder.

    psycopg and psycopg2 parse the query for placeholders whenever parameters are given, even empty ones.
    """
    if parameters:
        cur.execute(sql, parameters)
    else:
        cur.execute(sql)


def describe(hook: DbApiHook, sql: str, parameters: Parameters) -> list[str]:
    """The column names a query returns, read without fetching its rows."""
    conn = hook.get_conn()
    try:
        with closing(conn.cursor()) as cur:
            query = adapt_named_placeholders(sql, parameters, driver_paramstyle(conn))
            _execute(cur, f"SELECT * FROM ({query}) kapture_src WHERE 1 = 0", parameters)
            return [d[0] for d in cur.description]
    finally:
        conn.close()


def newest_per_order(sql: str, id_column: str, version_column: str) -> str:
    """Wrap a query so only each order's newest row (by ``version_column``) comes back."""
    return (
        f"SELECT * FROM (SELECT kapture_src.*, ROW_NUMBER() OVER (PARTITION BY {quote_identifier(id_column)} "
        f"ORDER BY {quote_identifier(version_column)} DESC) AS _kapture_rank FROM ({sql}) kapture_src) "
        "kapture_ranked WHERE _kapture_rank = 1"
    )


def _sqlite_snapshot(conn: Any, query: str, parameters: Parameters) -> str:
    """Copy the result of ``query`` into a temporary table and return the query that reads it back.

    A read left open on a SQLite database for the whole stream pins its WAL: the ledger's commits to the
    same file could not be checkpointed, the WAL would grow by kilobytes per order and every page read
    would search it, so a sync of a million rows slowed down quadratically. The copy lives in SQLite's
    temporary file (its cache is bounded, like the stream's memory); the commit ends the read.
    """
    cur = conn.cursor()
    try:
        cur.execute("DROP TABLE IF EXISTS temp.kapture_sync_stream")
        _execute(cur, f"CREATE TEMP TABLE kapture_sync_stream AS {query}", parameters)
    finally:
        cur.close()
    conn.commit()
    return "SELECT * FROM temp.kapture_sync_stream"


def stream_rows(
    hook: DbApiHook, sql: str, parameters: Parameters, chunk_size: int
) -> tuple[list[str], Iterator[list[tuple[Any, ...]]]]:
    """Run ``sql`` and return its column names and an iterator of row chunks.

    Uses a server-side (named) cursor where the driver has one (psycopg, psycopg2), so memory stays
    flat however many rows come back. SQLite reads the result from a copy in a temporary table (see
    :func:`_sqlite_snapshot`). The connection closes when the iterator is exhausted or closed.
    """
    conn = hook.get_conn()
    query = adapt_named_placeholders(sql, parameters, driver_paramstyle(conn))
    try:
        cur = conn.cursor(name="kapture_sync_stream")
        if hasattr(cur, "itersize"):
            cur.itersize = chunk_size
    except TypeError:  # no server-side cursors (sqlite3 streams anyway)
        cur = conn.cursor()
    try:
        if driver_name(conn) == "sqlite3":
            query, parameters = _sqlite_snapshot(conn, query, parameters), None
        _execute(cur, query, parameters)
        columns = [d[0] for d in cur.description]
    except Exception:
        with suppress(Exception):
            conn.close()
        raise

    def chunks() -> Iterator[list[tuple[Any, ...]]]:
        try:
            while rows := cur.fetchmany(chunk_size):
                yield [tuple(r) for r in rows]
        finally:
            with suppress(Exception):
                cur.close()
            with suppress(Exception):
                conn.close()

    return columns, chunks()
