"""Stream rows out of any common-sql connection, in chunks, with bound parameters.

What differs between drivers is handled here, from the connection's own driver: the placeholder
spelling (PEP 249 ``paramstyle``), and how to read a large result without holding it in memory
(PostgreSQL named cursors, MySQL/MariaDB unbuffered cursors, DuckDB's chunked fetch, a SQLite snapshot).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, suppress
from typing import Any, TypeVar

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.sync.dialect import driver_name, driver_paramstyle

Parameters = Mapping[str, Any] | Sequence[Any] | None
_T = TypeVar("_T")

#: How a named parameter is written for each ``paramstyle`` (``dollar``: DuckDB's ``$name``).
_MARKERS = {
    "named": ":{name}",
    "pyformat": "%({name})s",
    "format": "%s",
    "qmark": "?",
    "numeric": ":{position}",
    "dollar": "${name}",
}
_POSITIONAL = {"format", "qmark", "numeric"}
_PERCENT_STYLES = {"format", "pyformat"}
#: MySQL/MariaDB abort an unbuffered read whose client has not fetched for ``net_write_timeout``
#: seconds (default 60); a slow Kapture can hold the next fetch back longer than that.
_MYSQL_STREAM_TIMEOUT_S = 3600


def bind_parameters(sql: str, parameters: Parameters, paramstyle: str) -> tuple[str, Parameters]:
    """Rewrite named placeholders into the driver's ``paramstyle``, so one query runs on every driver.

    A query names its parameters ``:name`` or ``%(name)s``. Written with ``%(name)s`` it follows
    pyformat's rule that a literal ``%`` is written ``%%``; written with ``:name`` a ``%`` is always
    literal. Only names present in ``parameters`` are rewritten; values are bound by the driver,
    never formatted into the SQL. Positional styles get the values as a list, in order of use.
    """
    if not isinstance(parameters, Mapping) or not parameters:
        return sql, parameters
    names = "|".join(re.escape(str(k)) for k in sorted(parameters, key=lambda k: len(str(k)), reverse=True))
    pattern = re.compile(rf"(?<![:\w]):(?P<colon>{names})\b|%\((?P<pyformat>{names})\)s|(?P<percent>%%?)")
    pyformat_rules = re.search(rf"%\(({names})\)s", sql) is not None
    marker = _MARKERS[paramstyle] if paramstyle in _MARKERS else _MARKERS["qmark"]
    positional: list[Any] = []
    used: dict[str, Any] = {}

    def replace(match: re.Match[str]) -> str:
        percent = match.group("percent")
        if percent is not None:
            if paramstyle in _PERCENT_STYLES:
                return percent if pyformat_rules else percent * 2
            return "%" if pyformat_rules and percent == "%%" else percent
        name = match.group("colon") or match.group("pyformat")
        key = next(k for k in parameters if str(k) == name)
        positional.append(parameters[key])
        used[name] = parameters[key]
        return marker.format(name=name, position=len(positional))

    rewritten = pattern.sub(replace, sql)
    if not used:
        return sql, parameters
    return rewritten, positional if paramstyle in _POSITIONAL or paramstyle not in _MARKERS else used


def strip_sql(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def _execute(cur: Any, sql: str, parameters: Parameters) -> None:
    """Run ``sql``; without parameters none are passed, so a literal ``%`` (``LIKE 'P%'``) is no placeholder.

    psycopg, psycopg2 and MySQLdb parse the query for placeholders whenever parameters are given, even empty ones.
    """
    if parameters:
        cur.execute(sql, parameters)
    else:
        cur.execute(sql)


def describe(hook: DbApiHook, sql: str, parameters: Parameters) -> list[str]:
    """The column names a query returns, read without fetching its rows."""

    def columns(cur: Any) -> list[str]:
        names = [d[0] for d in cur.description]
        cur.fetchall()  # an unbuffered MySQL cursor must be read to the end before it closes
        return names

    return _around(hook, f"SELECT * FROM ({sql}\n) kapture_src WHERE 1 = 0", parameters, columns)


def count_rows(hook: DbApiHook, sql: str, parameters: Parameters) -> int:
    """How many rows a query returns (one ``COUNT(*)`` over it), for progress lines with an ETA."""
    return _around(
        hook, f"SELECT COUNT(*) FROM ({sql}\n) kapture_count", parameters, lambda cur: int(cur.fetchone()[0])
    )


def _around(hook: DbApiHook, query: str, parameters: Parameters, read: Callable[[Any], _T]) -> _T:
    """Run a query wrapped around the user's on a connection of its own, and ``read`` its result.

    The user's query ends its own line inside the wrapper, so that a trailing ``-- comment`` stays a comment.
    """
    conn = hook.get_conn()
    try:
        with closing(conn.cursor()) as cur:
            _execute(cur, *bind_parameters(query, parameters, driver_paramstyle(conn)))
            return read(cur)
    finally:
        conn.close()


def _sqlite_snapshot(conn: Any, query: str, parameters: Parameters) -> tuple[str, int]:
    """Copy the result of ``query`` into a temporary table; return the query that reads it back and its row count.

    A read left open on a SQLite database for the whole stream pins its WAL: the ledger's commits to the
    same file could not be checkpointed, the WAL would grow by kilobytes per order and every page read
    would search it, so a sync of a million rows slowed down quadratically. The copy lives in SQLite's
    temporary file (its cache is bounded, like the stream's memory); the commit ends the read.
    """
    cur = conn.cursor()
    try:
        cur.execute("DROP TABLE IF EXISTS temp.kapture_sync_stream")
        _execute(cur, f"CREATE TEMP TABLE kapture_sync_stream AS {query}", parameters)
        rows = int(cur.execute("SELECT COUNT(*) FROM temp.kapture_sync_stream").fetchone()[0])
    finally:
        cur.close()
    conn.commit()
    return "SELECT * FROM temp.kapture_sync_stream ORDER BY rowid", rows


def streaming_cursor(conn: Any, chunk_size: int) -> Any:
    """A cursor that reads a large result a chunk at a time, where the driver has one.

    psycopg and psycopg2: a named (server-side) cursor. MySQLdb and PyMySQL: ``SSCursor``;
    mysql-connector-python: its default unbuffered cursor (both after raising ``net_write_timeout``
    for this session). DuckDB fetches its result a chunk at a time anyway; SQLite reads a snapshot
    (see :func:`_sqlite_snapshot`); any other driver: its default cursor.
    """
    driver = driver_name(conn)
    if driver in ("psycopg", "psycopg2"):
        cur = conn.cursor(name="kapture_sync_stream")
        cur.itersize = chunk_size
        return cur
    if driver in ("MySQLdb", "pymysql", "mysql"):
        with closing(conn.cursor()) as setup:
            setup.execute(f"SET SESSION net_write_timeout = {_MYSQL_STREAM_TIMEOUT_S}")
        if driver == "MySQLdb":
            import MySQLdb.cursors

            return conn.cursor(MySQLdb.cursors.SSCursor)
        if driver == "pymysql":
            import pymysql.cursors

            return conn.cursor(pymysql.cursors.SSCursor)
        return conn.cursor(buffered=False)
    return conn.cursor()


class RowStream:
    """The row chunks of a running query; reading to the end or :meth:`close` closes its cursor and connection."""

    def __init__(self, conn: Any, cur: Any, first: Sequence[Any], chunk_size: int, row_count: int | None = None):
        self._conn, self._cur, self._first, self._chunk_size = conn, cur, first, chunk_size
        #: how many rows the query returned, when known before they are read (SQLite's snapshot)
        self.row_count = row_count

    def __iter__(self) -> Iterator[list[tuple[Any, ...]]]:
        try:
            rows = self._first
            while rows:
                yield [tuple(r) for r in rows]
                rows = self._cur.fetchmany(self._chunk_size)
        finally:
            self.close()

    def close(self) -> None:
        """Close the cursor and the connection (again: nothing happens); safe before the first chunk too."""
        if self._conn is None:
            return
        with suppress(Exception):
            self._cur.close()
        with suppress(Exception):
            self._conn.close()
        self._conn = None


def stream_rows(hook: DbApiHook, sql: str, parameters: Parameters, chunk_size: int) -> tuple[list[str], RowStream]:
    """Run ``sql`` and return its column names and its rows, chunk by chunk.

    Memory stays flat however many rows come back (see :func:`streaming_cursor`). The first chunk is
    fetched before the column names are read: psycopg2's named cursor describes its result only then.
    """
    conn = hook.get_conn()
    row_count = None
    try:
        query, bound = bind_parameters(sql, parameters, driver_paramstyle(conn))
        cur = streaming_cursor(conn, chunk_size)
        if driver_name(conn) == "sqlite3":
            (query, row_count), bound = _sqlite_snapshot(conn, query, bound), None
        _execute(cur, query, bound)
        first = cur.fetchmany(chunk_size)
        columns = [d[0] for d in cur.description]
    except Exception:
        with suppress(Exception):
            conn.close()
        raise
    return columns, RowStream(conn, cur, first, chunk_size, row_count)
