"""An example ERP warehouse: the ``erp_orders`` table the example sync DAGs read, and realistic data.

``python -m kapture_provider.testing.warehouse --db erp.db --orders 3000`` creates a SQLite warehouse, or
``--url mysql://…`` (also ``postgresql://…``, ``duckdb:///…``) another database; :func:`insert_orders`
fills a connection of any of those drivers. The schema: docs/example-dags.md (on MySQL/MariaDB
``updated_at`` is a ``DATETIME``: their ``TIMESTAMP`` converts time zones).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

from kapture_provider.sync.dialect import DUCKDB, MYSQL, POSTGRES, SQLITE, driver_name

ERP_ORDERS_DDL = """CREATE TABLE IF NOT EXISTS erp_orders (
    order_id VARCHAR(32) PRIMARY KEY,
    customer_name VARCHAR(200),
    phone VARCHAR(32),
    email VARCHAR(200),
    city VARCHAR(100),
    invoice_no VARCHAR(32),
    invoice_date DATE,
    delivery_status VARCHAR(32),
    payment_mode VARCHAR(32),
    total_amount NUMERIC(12, 2),
    updated_at TIMESTAMP NOT NULL
)"""
#: The sync selects by ``updated_at`` range: without this index every run scans the whole table.
ERP_ORDERS_INDEX_DDL = "CREATE INDEX IF NOT EXISTS erp_orders_updated_at ON erp_orders (updated_at)"
#: MySQL/MariaDB: ``DATETIME`` (see the module docstring), the index declared with the table (MySQL has no
#: ``CREATE INDEX IF NOT EXISTS``), and UTF-8 text whatever the server's default.
MYSQL_ERP_ORDERS_DDL = (
    ERP_ORDERS_DDL.replace("TIMESTAMP NOT NULL", "DATETIME NOT NULL").replace(
        "updated_at DATETIME NOT NULL\n)",
        "updated_at DATETIME NOT NULL,\n    INDEX erp_orders_updated_at (updated_at)\n)",
    )
    + " DEFAULT CHARSET=utf8mb4"
)
ERP_ORDER_COLUMNS = (
    "order_id", "customer_name", "phone", "email", "city", "invoice_no", "invoice_date",
    "delivery_status", "payment_mode", "total_amount", "updated_at",
)  # fmt: skip
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"

_FIRST = ("Aarav", "Diya", "Ishaan", "Kavya", "Rohan", "Ananya", "Vikram", "Meera", "Arjun", "Saanvi")
_LAST = ("Sharma", "Iyer", "Patel", "Reddy", "Nair", "Gupta", "Khan", "Das", "Menon", "Singh")
_CITIES = ("Bengaluru", "Mumbai", "Delhi", "Chennai", "Hyderabad", "Pune", "Kolkata", "Jaipur")
_STATUSES = ("Placed", "Packed", "Shipped", "Out for delivery", "Delivered", "Returned")
_PAYMENTS = ("UPI", "Card", "Cash on delivery", "Net banking")


def generate_orders(
    count: int,
    start: dt.datetime,
    end: dt.datetime,
    *,
    seed: int = 7,
    invalid: int = 0,
    first_id: int = 23_500_000,
) -> Iterator[tuple[Any, ...]]:
    """Yield ``count`` order rows with ``updated_at`` spread over ``[start, end)``.

    The first ``invalid`` rows (by position) have an empty customer name, so Kapture's mandatory
    field is missing and the sync must report them.
    """
    rng = random.Random(seed)
    span = (end - start).total_seconds()
    for i in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        name = "" if i < invalid else f"{first} {last}"
        updated = start + dt.timedelta(seconds=int(span * i / max(count, 1)))
        yield (
            f"{first_id + i:08d}",
            name,
            f"9{rng.randrange(10**9):09d}",
            f"{first.lower()}.{last.lower()}{i}@example.com",
            rng.choice(_CITIES),
            f"INV-{first_id + i}",
            (updated - dt.timedelta(days=rng.randrange(30))).strftime("%Y-%m-%d"),
            rng.choice(_STATUSES),
            rng.choice(_PAYMENTS),
            Decimal(rng.randrange(10_000, 5_000_000)) / 100,
            updated.strftime(TIMESTAMP_FORMAT),
        )


def engine_of_connection(conn: Any) -> str:
    """``sqlite``, ``postgresql``, ``mysql`` or ``duckdb``, from a DB-API connection's driver."""
    driver = driver_name(conn)
    if driver in ("MySQLdb", "mysql", "pymysql"):
        return MYSQL
    if driver in ("psycopg", "psycopg2"):
        return POSTGRES
    return DUCKDB if driver in ("duckdb", "_duckdb") else SQLITE


def erp_orders_ddl(engine: str) -> list[str]:
    """The statements that create ``erp_orders`` and its index on ``engine``, if missing."""
    return [MYSQL_ERP_ORDERS_DDL] if engine == MYSQL else [ERP_ORDERS_DDL, ERP_ORDERS_INDEX_DDL]


def insert_orders(conn: Any, rows: Sequence[tuple[Any, ...]], placeholder: str | None = None) -> None:
    """Create ``erp_orders`` if needed and insert (or replace) rows through a DB-API connection.

    Works on SQLite, PostgreSQL, MySQL/MariaDB and DuckDB connections (``placeholder`` is derived from
    the driver when not given).
    """
    engine = engine_of_connection(conn)
    placeholder = placeholder or ("%s" if engine in (MYSQL, POSTGRES) else "?")
    marks = ", ".join([placeholder] * len(ERP_ORDER_COLUMNS))
    if engine == MYSQL:
        upsert = "ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in ERP_ORDER_COLUMNS[1:])
    else:
        upsert = "ON CONFLICT (order_id) DO UPDATE SET " + ", ".join(
            f"{c} = excluded.{c}" for c in ERP_ORDER_COLUMNS[1:]
        )
    with closing(conn.cursor()) as cur:
        for statement in erp_orders_ddl(engine):
            cur.execute(statement)
        cur.executemany(
            f"INSERT INTO erp_orders ({', '.join(ERP_ORDER_COLUMNS)}) VALUES ({marks}) {upsert}",
            [_adapt(row, engine) for row in rows],
        )
    conn.commit()


def _adapt(row: tuple[Any, ...], engine: str) -> tuple[Any, ...]:
    # sqlite3 has no Decimal adapter: store amounts as text with NUMERIC affinity (exact digits)
    return tuple(str(v) if isinstance(v, Decimal) and engine == SQLITE else v for v in row)


def connect_url(url: str) -> Any:
    """A DB-API connection from ``sqlite:///path``, ``postgresql://…``, ``mysql://…`` or ``duckdb:///path``."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    database = unquote(parts.path[1:])  # SQLAlchemy's spelling: sqlite:///relative, sqlite:////absolute
    if scheme == SQLITE:
        return sqlite3.connect(database)
    if scheme == DUCKDB:
        import duckdb

        return duckdb.connect(database)
    host, user, password = parts.hostname or "127.0.0.1", unquote(parts.username or ""), unquote(parts.password or "")
    if scheme in ("postgresql", "postgres"):
        import psycopg

        return psycopg.connect(host=host, user=user, password=password, port=parts.port or 5432, dbname=database)
    if scheme in ("mysql", "mariadb"):
        import MySQLdb

        return MySQLdb.connect(host=host, user=user, password=password, port=parts.port or 3306, database=database)
    raise ValueError(f"unsupported database URL scheme {parts.scheme!r}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create an ERP warehouse with example orders.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--db", help="SQLite file to create or extend")
    target.add_argument("--url", help="sqlite:///, postgresql://, mysql:// or duckdb:/// database to fill")
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--invalid", type=int, default=3, help="rows with a missing customer name")
    parser.add_argument("--start", default="2026-11-26T00:00:00", help="first updated_at (UTC)")
    parser.add_argument("--hours", type=int, default=4, help="hours the updates are spread over")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    start = dt.datetime.fromisoformat(args.start)
    rows = list(generate_orders(args.orders, start, start + dt.timedelta(hours=args.hours),
                                seed=args.seed, invalid=args.invalid))  # fmt: skip
    with closing(connect_url(args.url or f"sqlite:///{args.db}")) as conn:
        insert_orders(conn, rows)
    seeded = _without_password(args.url) if args.url else args.db
    print(f"seeded {len(rows)} orders ({args.invalid} invalid) into {seeded}, {args.hours} h from {start}")


def _without_password(url: str) -> str:
    """The URL as safe to print: ``user:***@host``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


if __name__ == "__main__":
    main()
