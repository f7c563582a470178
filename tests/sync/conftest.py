"""Warehouse fixtures for the sync tests, and a ``dag.test(logical_date=...)`` runner.

* ``sqlite_warehouse``: a SQLite file in ``tmp_path`` holding an empty ``erp_orders``.
* ``postgres_warehouse``: ``erp_orders`` and the ledger table dropped and recreated in database ``test``
  on 127.0.0.1:5432. Each test session works in its own schema (``search_path`` set through the
  connection's ``options`` extra), so two pytest processes running at once cannot drop each other's tables.
* ``warehouse``: parametrised over both.

Each is exposed to Airflow as the ``erp_warehouse`` connection (``AIRFLOW_CONN_ERP_WAREHOUSE``, JSON form).
``run_dag_at`` runs a DAG through ``dag.test(logical_date=...)`` in-process, against the isolated metadata
DB that ``tests/conftest.py`` migrates (fixture ``airflow_metadata_db``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kapture_provider.testing.warehouse import ERP_ORDERS_DDL, insert_orders

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAG_FILE = REPO / "dags" / "kapture_erp_order_sync.py"
LEDGER_TABLE = "kapture_order_sync_ledger"
WAREHOUSE_CONN_ID = "erp_warehouse"
PG_DSN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
LEDGER_COLUMNS = (
    "order_id", "status", "body_hash", "version", "pending_body", "pending_hash", "pending_version",
    "last_error", "attempts", "first_seen_at", "last_attempt_at", "delivered_at",
)  # fmt: skip


@dataclass
class Warehouse:
    """One test warehouse: how to reach it from the test, and the Airflow connection pointing at it."""

    kind: str  # "sqlite" | "postgres"
    connect: Callable[[], Any]
    placeholder: str
    conn_json: str
    path: Path | None = None  # SQLite file
    schema: str | None = None  # PostgreSQL schema holding the tables

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> None:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, tuple(parameters))
            conn.commit()
        finally:
            conn.close()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.executemany(sql, [self.adapt(row) for row in rows])
            conn.commit()
        finally:
            conn.close()

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, tuple(parameters))
            return [tuple(row) for row in cur.fetchall()]
        finally:
            conn.close()

    def adapt(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """sqlite3 cannot bind ``Decimal``: store amounts as text (NUMERIC affinity keeps the digits)."""
        if self.kind != "sqlite":
            return tuple(row)
        return tuple(str(v) if isinstance(v, Decimal) else v for v in row)

    def insert_orders(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert (or replace) ``erp_orders`` rows shaped like ``generate_orders`` yields."""
        conn = self.connect()
        try:
            insert_orders(conn, list(rows), self.placeholder)
        finally:
            conn.close()

    def table_exists(self, name: str) -> bool:
        if self.kind == "sqlite":
            return bool(self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))
        return bool(
            self.query(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                (self.schema, name),
            )
        )

    def ledger(self, table: str = LEDGER_TABLE) -> dict[str, dict[str, Any]]:
        """The ledger table as ``order_id -> row dict`` ({} when the table does not exist)."""
        if not self.table_exists(table):
            return {}
        rows = self.query(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM {table}")
        return {row[0]: dict(zip(LEDGER_COLUMNS, row, strict=True)) for row in rows}


@pytest.fixture
def sqlite_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """An empty ``erp_orders`` in a fresh SQLite file; ``erp_warehouse`` points at it."""
    path = tmp_path / "erp.db"
    with sqlite3.connect(path) as conn:
        conn.execute(ERP_ORDERS_DDL)
    conn.close()
    conn_json = json.dumps({"conn_type": "sqlite", "host": str(path)})
    monkeypatch.setenv(f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}", conn_json)
    return Warehouse("sqlite", lambda: sqlite3.connect(path), "?", conn_json, path=path)


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    """A schema of its own in database ``test`` for this pytest process, dropped at the end."""
    import psycopg

    schema = f"kapture_sync_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(**PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema
    with psycopg.connect(**PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def postgres_warehouse(postgres_schema: str, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """``erp_orders`` (empty) and no ledger table in PostgreSQL; ``erp_warehouse`` points at it."""
    import psycopg

    options = f"-c search_path={postgres_schema}"

    def connect() -> Any:
        return psycopg.connect(**PG_DSN, options=options)

    with psycopg.connect(**PG_DSN, options=options, autocommit=True) as conn:
        for table in ("erp_orders", LEDGER_TABLE, f"{LEDGER_TABLE}_runs", "order_changes"):
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        conn.execute(ERP_ORDERS_DDL)
    conn_json = json.dumps(
        {
            "conn_type": "postgres",
            "host": PG_DSN["host"],
            "port": PG_DSN["port"],
            "login": PG_DSN["user"],
            "schema": PG_DSN["dbname"],
            "extra": {"options": options},
        }
    )
    monkeypatch.setenv(f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}", conn_json)
    return Warehouse("postgres", connect, "%s", conn_json, schema=postgres_schema)


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request: pytest.FixtureRequest) -> Warehouse:
    """The same test on a SQLite and on a PostgreSQL warehouse."""
    return request.getfixturevalue(f"{request.param}_warehouse")


# --------------------------------------------------------------------------------------------------
# DAG runs at a given logical date
# --------------------------------------------------------------------------------------------------


def load_dag_file(path: Path, dag_id: str | None = None) -> Any:
    """Import a DAG file afresh (a new module each time) and return its DAG (the only one, or ``dag_id``)."""
    from kapture_provider.compat import DAG

    module_name = f"kapture_test_dag_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dags = [v for v in vars(module).values() if isinstance(v, DAG)]
    if dag_id is not None:
        dags = [d for d in dags if d.dag_id == dag_id]
    assert len(dags) == 1, f"expected one DAG in {path}, found {[d.dag_id for d in dags]}"
    return dags[0]


@pytest.fixture
def example_dag() -> Any:
    """The example DAG, imported afresh from ``dags/kapture_erp_order_sync.py``."""
    dag = load_dag_file(EXAMPLE_DAG_FILE)
    assert dag.dag_id == "kapture_erp_order_sync"
    return dag


@pytest.fixture
def run_dag_at(run_dag: Callable[..., Any]) -> Callable[[Any, dt.datetime], Any]:
    """``run_dag`` at a logical date T: an hourly DAG's run then covers ``[T - 1 h, T)``."""
    return run_dag
