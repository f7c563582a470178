"""Which database a common-sql hook talks to, and what its driver expects: decided once per hook.

The engine comes from the hook's own ``dialect_name`` (common-sql: the SQLAlchemy dialect of the
connection URI, or the connection's ``dialect`` / ``sqlalchemy_scheme`` extra), never from a guess at
the SQL. Identifiers are quoted with the hook's ``escape_word_format`` (``MySqlHook`` sets backticks;
a connection extra may set another) — always, not only for reserved words as
``Dialect.escape_word`` does, because the names come from the cursor's description with their exact
case and PostgreSQL or Snowflake would fold an unquoted mixed-case name. Placeholders follow the
driver's PEP 249 ``paramstyle``.
"""

from __future__ import annotations

import sys
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook

SQLITE, POSTGRES, MYSQL, DUCKDB = "sqlite", "postgresql", "mysql", "duckdb"
#: The engines that can hold the change ledger, as named in error messages and the README.
LEDGER_DATABASES = "SQLite, PostgreSQL, MySQL/MariaDB or DuckDB"
#: SQLAlchemy dialect names that are the same engine for us.
_ALIASES = {"mariadb": MYSQL, "postgres": POSTGRES}
#: Connection types whose hook may not name its dialect (``default``) when SQLAlchemy lacks the engine.
_CONN_TYPES = {"sqlite": SQLITE, "postgres": POSTGRES, "mysql": MYSQL, "duckdb": DUCKDB}
#: The DB-API drivers each ledger engine is tested with (another driver behind the same dialect name,
#: such as Redshift's behind a ``postgresql://`` URI, is a different database).
LEDGER_DRIVERS = {
    SQLITE: {"sqlite3"},
    POSTGRES: {"psycopg", "psycopg2"},
    MYSQL: {"MySQLdb", "mysql", "pymysql"},
    DUCKDB: {"duckdb", "_duckdb"},
}


def engine_of(hook: DbApiHook) -> str:
    """The engine behind ``hook``: ``sqlite``, ``postgresql``, ``mysql``, ``duckdb``, or another dialect name.

    Reads no data and opens no connection (``default`` when common-sql cannot tell).
    """
    try:
        name = str(hook.dialect_name).lower()
    except Exception:  # a hook whose URI cannot be built without its optional packages
        name = "default"
    if name == "default":  # then the connection type names the engine, if anything does
        conn_type = str(getattr(hook, "conn_type", "") or "")
        return _CONN_TYPES.get(conn_type, conn_type or name)
    return _ALIASES.get(name, name)


def quote_identifier(hook: DbApiHook, name: str) -> str:
    """``name`` quoted the way the hook's database quotes identifiers (``"x"``, `` `x` ``, ``[x]``)."""
    template = hook.escape_word_format
    closing = template[-1] if template.endswith(('"', "`", "]")) else ""
    return template.format(name.replace(closing, closing * 2) if closing else name)


def driver_name(conn: Any) -> str:
    """The top-level DB-API package behind a connection: ``sqlite3``, ``psycopg2``, ``MySQLdb``, ``mysql``…"""
    return type(conn).__module__.split(".")[0]


def driver_paramstyle(conn: Any) -> str:
    """The PEP 249 ``paramstyle`` of the driver behind a connection.

    Looked up from the connection class's module upwards, since drivers declare it on their package
    (``mysql.connector``, not ``mysql``); DuckDB declares ``qmark`` but binds ``$name`` natively,
    which keeps named parameters named (``dollar`` here).
    """
    module = type(conn).__module__
    if module.split(".")[0] in ("duckdb", "_duckdb"):
        return "dollar"
    while module:
        style = getattr(sys.modules.get(module), "paramstyle", None)
        if isinstance(style, str):
            return style
        module = module.rpartition(".")[0]
    return "qmark"
