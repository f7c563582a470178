"""Warehouse fixtures for the sync tests, and DAG runners (in-process ``dag.test()`` and the ``airflow`` CLI).

* ``sqlite_warehouse``: a SQLite file in ``tmp_path`` holding an empty ``erp_orders``.
* ``postgres_warehouse``: ``erp_orders`` and the ledger table dropped and recreated in database ``test``
  on 127.0.0.1:5432. Each test session works in its own schema (``search_path`` set through the
  connection's ``options`` extra), so two pytest processes running at once cannot drop each other's tables.
* ``mariadb_warehouse``: the same in MariaDB on 127.0.0.1:3306, in a database of this pytest process
  (created at the start, dropped at the end); read through mysqlclient (``mysql-connector-python`` with
  :func:`use_mysql_client`).
* ``duckdb_warehouse``: a DuckDB file in ``tmp_path`` (the official DuckDB provider's hook).
* ``warehouse``: parametrised over SQLite and PostgreSQL; ``any_warehouse`` over all four.

Each is exposed to Airflow as the ``erp_warehouse`` connection (``AIRFLOW_CONN_ERP_WAREHOUSE``, JSON form).
``run_dag_at`` runs a DAG through ``dag.test(logical_date=...)`` in-process, against the isolated metadata
DB that ``tests/conftest.py`` migrates (fixture ``airflow_metadata_db``); ``airflow_cli`` runs
``airflow dags test`` in a subprocess against the same metadata DB.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kapture_provider.sync.ledger_schema import COLUMNS
from kapture_provider.testing.warehouse import ERP_ORDERS_DDL, MYSQL_ERP_ORDERS_DDL, insert_orders

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAG_FILE = REPO / "dags" / "kapture_erp_order_sync.py"
FULL_DIFF_DAG_FILE = REPO / "dags" / "kapture_erp_order_full_diff.py"
LEDGER_TABLE = "kapture_order_sync_ledger"
#: What a test may leave behind in a shared database: the tables and the ledgers with their run logs.
TEST_TABLES = (
    "erp_orders",
    "order_changes",
    *(f"{t}{r}" for t in (LEDGER_TABLE, "kapture_changes_ledger") for r in ("", "_runs", "_lease")),
)
WAREHOUSE_CONN_ID = "erp_warehouse"
PG_DSN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root"}
LEDGER_COLUMNS = tuple(c.name for c in COLUMNS)
WAREHOUSE_KINDS = ("sqlite", "postgres", "mariadb", "duckdb")


@dataclass
class Warehouse:
    """One test database: how to reach it from the test, and the Airflow connection pointing at it."""

    kind: str  # "sqlite" | "postgres" | "mariadb" | "duckdb"
    connect: Callable[[], Any]
    placeholder: str
    conn_json: str
    path: Path | None = None  # SQLite / DuckDB file
    schema: str | None = None  # PostgreSQL schema / MariaDB database holding the tables
    conn_id: str = WAREHOUSE_CONN_ID

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
            return [tuple(_text(v) for v in row) for row in cur.fetchall()]
        finally:
            conn.close()

    def adapt(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """sqlite3 cannot bind ``Decimal``: store amounts as text (NUMERIC affinity keeps the digits)."""
        if self.kind != "sqlite":
            return tuple(row)
        return tuple(str(v) if isinstance(v, Decimal) else v for v in row)

    def ddl(self, statement: str) -> str:
        """A ``CREATE TABLE`` written for SQLite/PostgreSQL, as MariaDB needs it (``DATETIME``, not ``TIMESTAMP``)."""
        return statement.replace("TIMESTAMP", "DATETIME") if self.kind == "mariadb" else statement

    def insert_orders(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert (or replace) ``erp_orders`` rows shaped like ``generate_orders`` yields."""
        conn = self.connect()
        try:
            insert_orders(conn, list(rows))
        finally:
            conn.close()

    def table_exists(self, name: str) -> bool:
        if self.kind == "sqlite":
            return bool(self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))
        p = self.placeholder
        schema = self.schema or "main"
        return bool(
            self.query(
                f"SELECT 1 FROM information_schema.tables WHERE table_schema = {p} AND table_name = {p}",
                (schema, name),
            )
        )

    def ledger(self, table: str = LEDGER_TABLE) -> dict[str, dict[str, Any]]:
        """The ledger table as ``order_id -> row dict`` ({} when the table does not exist)."""
        if not self.table_exists(table):
            return {}
        rows = self.query(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM {table}")
        return {row[0]: dict(zip(LEDGER_COLUMNS, row, strict=True)) for row in rows}


def _text(value: Any) -> Any:
    """MariaDB's binary ledger key, read back as the order id it is."""
    return bytes(value).decode("utf-8") if isinstance(value, bytes | bytearray) else value


def _set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn_json: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn_json)


@pytest.fixture
def sqlite_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """An empty ``erp_orders`` in a fresh SQLite file; ``erp_warehouse`` points at it."""
    path = tmp_path / "erp.db"
    with sqlite3.connect(path) as conn:
        conn.execute(ERP_ORDERS_DDL)
    conn.close()
    conn_json = json.dumps({"conn_type": "sqlite", "host": str(path)})
    _set_connection(monkeypatch, WAREHOUSE_CONN_ID, conn_json)
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


def postgres_database(schema: str, *, drop: Sequence[str] = ()) -> Warehouse:
    """A PostgreSQL :class:`Warehouse` over ``schema`` (its connection not yet exposed to Airflow)."""
    import psycopg

    options = f"-c search_path={schema}"

    def connect() -> Any:
        return psycopg.connect(**PG_DSN, options=options)

    with psycopg.connect(**PG_DSN, options=options, autocommit=True) as conn:
        for table in drop:
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
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
    return Warehouse("postgres", connect, "%s", conn_json, schema=schema)


@pytest.fixture
def postgres_warehouse(postgres_schema: str, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """``erp_orders`` (empty) and no ledger table in PostgreSQL; ``erp_warehouse`` points at it."""
    warehouse = postgres_database(postgres_schema, drop=TEST_TABLES)
    warehouse.execute(ERP_ORDERS_DDL)
    _set_connection(monkeypatch, WAREHOUSE_CONN_ID, warehouse.conn_json)
    return warehouse


@pytest.fixture
def postgres_ledger(postgres_schema: str, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """A PostgreSQL database for the ledger alone (no ledger tables yet), as connection ``erp_ledger``."""
    ledger = postgres_database(postgres_schema, drop=TEST_TABLES)
    ledger.conn_id = "erp_ledger"
    _set_connection(monkeypatch, ledger.conn_id, ledger.conn_json)
    return ledger


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    """A database of its own on the MariaDB server for this pytest process, dropped at the end."""
    import MySQLdb

    name = f"kapture_sync_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    conn = MySQLdb.connect(**MARIADB)
    conn.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    conn.close()
    yield name
    conn = MySQLdb.connect(**MARIADB)
    conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
    conn.close()


@pytest.fixture
def mariadb_warehouse(mariadb_database: str, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """``erp_orders`` (empty) and no ledger table in MariaDB (mysqlclient); ``erp_warehouse`` points at it."""
    import MySQLdb

    def connect() -> Any:
        return MySQLdb.connect(**MARIADB, database=mariadb_database)

    warehouse = Warehouse("mariadb", connect, "%s", "", schema=mariadb_database)
    for table in TEST_TABLES:
        warehouse.execute(f"DROP TABLE IF EXISTS {table}")
    warehouse.execute(MYSQL_ERP_ORDERS_DDL)
    use_mysql_client(warehouse, monkeypatch, "mysqlclient")
    return warehouse


@pytest.fixture
def mariadb_connector_warehouse(mariadb_warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """The MariaDB warehouse, read by Airflow through mysql-connector-python instead of mysqlclient."""
    use_mysql_client(mariadb_warehouse, monkeypatch, "mysql-connector-python")
    return mariadb_warehouse


def use_mysql_client(warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, client: str) -> None:
    """Point ``erp_warehouse`` at the MariaDB warehouse through ``client`` (mysqlclient, mysql-connector-python)."""
    warehouse.conn_json = json.dumps(
        {
            "conn_type": "mysql",
            "host": MARIADB["host"],
            "port": MARIADB["port"],
            "login": MARIADB["user"],
            "schema": warehouse.schema,
            "extra": {"client": client},
        }
    )
    _set_connection(monkeypatch, WAREHOUSE_CONN_ID, warehouse.conn_json)


@pytest.fixture
def duckdb_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """An empty ``erp_orders`` in a fresh DuckDB file; ``erp_warehouse`` points at it (DuckDB provider).

    The test connects through the provider's hook too: DuckDB shares one open database between the
    connections of a process only when they were opened with the same configuration.
    """
    from airflow.providers.duckdb.hooks.duckdb import DuckDBHook

    path = tmp_path / "erp.duckdb"

    def connect() -> Any:
        return DuckDBHook(duckdb_conn_id=WAREHOUSE_CONN_ID).get_conn()

    warehouse = Warehouse("duckdb", connect, "?", json.dumps({"conn_type": "duckdb", "host": str(path)}), path=path)
    _set_connection(monkeypatch, WAREHOUSE_CONN_ID, warehouse.conn_json)
    warehouse.execute(ERP_ORDERS_DDL)
    return warehouse


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request: pytest.FixtureRequest) -> Warehouse:
    """The same test on a SQLite and on a PostgreSQL warehouse."""
    return request.getfixturevalue(f"{request.param}_warehouse")


@pytest.fixture(params=WAREHOUSE_KINDS)
def any_warehouse(request: pytest.FixtureRequest) -> Warehouse:
    """The same test on each warehouse engine: SQLite, PostgreSQL, MariaDB and DuckDB."""
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
def full_diff_dag() -> Any:
    """The nightly full-table diff example DAG, imported afresh from ``dags/kapture_erp_order_full_diff.py``."""
    return load_dag_file(FULL_DIFF_DAG_FILE, "kapture_erp_order_full_diff")


@pytest.fixture
def run_dag_at(run_dag: Callable[..., Any]) -> Callable[[Any, dt.datetime], Any]:
    """``run_dag`` at a logical date T: an hourly DAG's run then covers ``[T - 1 h, T)``."""
    return run_dag


# --------------------------------------------------------------------------------------------------
# DAG runs through the `airflow dags test` command, in a subprocess
# --------------------------------------------------------------------------------------------------

CLI_DAGS = Path(__file__).with_name("cli_dags")
sys.path.insert(0, str(CLI_DAGS))  # the tests share the acceptance DAGs' table and query with them


@dataclass
class CliRun:
    """What one ``airflow dags test`` left: its exit code and output, and the run's record in the metadata DB."""

    returncode: int
    output: str
    state: str | None
    task_states: dict[str, str | None]
    summaries: dict[str, Any]  # task id -> the XCom it returned (its sync summary)

    def summary(self, task_id: str) -> dict[str, Any]:
        assert task_id in self.summaries, f"{task_id} pushed no summary; output:\n{self.output[-4000:]}"
        return self.summaries[task_id]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def cli_dags_folder(tmp_path_factory: pytest.TempPathFactory, airflow_metadata_db: Path) -> Path:
    """A DAGs folder with the example DAGs and the acceptance DAGs of ``tests/sync/cli_dags``, parsed into the DB.

    ``airflow dags reserialize`` first, as the README says: Airflow 3.0's ``dags test`` refuses a task
    whose outlet asset no parse has registered yet.
    """
    folder = tmp_path_factory.mktemp("cli-dags")
    for source in (REPO / "dags" / "kapture_erp_orders.py", EXAMPLE_DAG_FILE, *CLI_DAGS.glob("*.py")):
        shutil.copy(source, folder)
    subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"],
        env=cli_env(folder), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return folder


def cli_env(dags_folder: Path) -> dict[str, str]:
    """The ``airflow`` command's environment: this process's, the DAGs folder, and that folder on ``PYTHONPATH``
    (Airflow 3.0's CLI leaves it off ``sys.path``; the acceptance DAGs import ``kapture_erp_orders`` from it)."""
    python_path = os.pathsep.join(filter(None, [str(dags_folder), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder), "PYTHONPATH": python_path}


@pytest.fixture
def airflow_cli(airflow_metadata_db: Path, cli_dags_folder: Path) -> Callable[..., Any]:
    """``airflow_cli(dag_id, logical_date, env={...})``: run ``airflow dags test`` and return a :class:`CliRun`.

    The subprocess sees this process's environment (the isolated ``AIRFLOW_HOME`` and the
    ``AIRFLOW_CONN_*`` the fixtures set) plus ``env``, with the DAGs folder of :func:`cli_dags_folder`.
    ``airflow_cli.start(...)`` starts the same command and returns the ``Popen`` (own process group).
    """

    def command(dag_id: str, logical_date: dt.datetime, env: dict[str, str] | None) -> dict[str, Any]:
        return {
            "args": [sys.executable, "-m", "airflow", "dags", "test", dag_id, logical_date.isoformat()],
            "env": {**cli_env(cli_dags_folder), **(env or {})},
        }

    def run(dag_id: str, logical_date: dt.datetime, env: dict[str, str] | None = None) -> CliRun:
        done = subprocess.run(**command(dag_id, logical_date, env), capture_output=True, text=True, timeout=600)
        return read_cli_run(airflow_metadata_db, dag_id, done.returncode, done.stdout + done.stderr)

    def start(dag_id: str, logical_date: dt.datetime, log: Path, env: dict[str, str] | None = None) -> Any:
        with log.open("wb") as out:
            return subprocess.Popen(
                **command(dag_id, logical_date, env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    run.start = start  # type: ignore[attr-defined]
    return run


def read_cli_run(metadata_db: Path, dag_id: str, returncode: int, output: str) -> CliRun:
    """The newest run of ``dag_id`` in the metadata DB: its state, task states and returned XComs."""
    with sqlite3.connect(metadata_db) as conn:
        found = conn.execute(
            "SELECT id, run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        if found is None:
            return CliRun(returncode, output, None, {}, {})
        run_pk, run_id, state = found
        states = dict(
            conn.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        )
        xcoms = conn.execute(
            "SELECT task_id, value FROM xcom WHERE dag_run_id = ? AND key = 'return_value'", (run_pk,)
        ).fetchall()
    conn.close()
    summaries = {task_id: _xcom_value(value) for task_id, value in xcoms}
    return CliRun(returncode, output, state, states, summaries)


def _xcom_value(value: Any) -> Any:
    """An XCom as Airflow 3 stores it in SQLite: JSON text (possibly JSON of a JSON string)."""
    while isinstance(value, str | bytes):
        value = json.loads(value)
    return value
