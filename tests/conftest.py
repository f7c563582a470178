"""Shared test fixtures, and the test tiers.

Every test has a tier (the markers registered in pyproject.toml): ``unit`` (no servers), ``integration``
(PostgreSQL, MariaDB or a proxy) or ``system`` (a real scheduler, Celery workers or a browser). A module
says which with ``pytestmark``; ``tests/sync`` mixes SQLite and server warehouses in one module, so a test
there without one is tiered by its fixtures (see :func:`pytest_collection_modifyitems`).

Airflow reads ``AIRFLOW_HOME`` and the metadata database URL when it is first imported, so an isolated,
throw-away Airflow home is configured here at conftest import time (before any test module imports
airflow). Its SQLite metadata DB is migrated once per session by ``airflow db migrate`` in a subprocess,
started in the background right after collection when a collected test uses ``airflow_metadata_db``
(directly or through ``run_dag``); hook and payload tests never touch the DB.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kapture_provider.testing.emulator import KaptureEmulator

# The example DAG files import their shared module as Airflow does: with the DAGs folder on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dags"))

# --------------------------------------------------------------------------------------------------
# Isolated Airflow home (must happen before airflow is imported anywhere in the test process)
# --------------------------------------------------------------------------------------------------


def _configure_isolated_airflow_home() -> Path:
    """Point Airflow at a fresh temporary home with a SQLite metadata DB and an empty dags folder."""
    home = Path(tempfile.mkdtemp(prefix="kapture-airflow-home-"))
    (home / "dags").mkdir()
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        }
    )
    return home


if "airflow" in sys.modules:  # pragma: no cover - would silently use the developer's real Airflow home
    raise RuntimeError("airflow was imported before tests/conftest.py could isolate AIRFLOW_HOME")
AIRFLOW_TEST_HOME = _configure_isolated_airflow_home()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _migration is not None and _migration.poll() is None:
        _migration.kill()
        _migration.wait()
    shutil.rmtree(AIRFLOW_TEST_HOME, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Kapture connections pointing at the emulator, with small backoffs so that retry tests are fast
# --------------------------------------------------------------------------------------------------

FAST_RETRY_EXTRAS: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05, "max_retries": 2}


@pytest.fixture
def kapture_conn_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Factory: ``kapture_conn_env(conn_id, host=..., login=..., password=..., extra={...})``.

    Sets ``AIRFLOW_CONN_<CONN_ID>`` (JSON form) for this test only and returns the conn id.
    """

    def set_connection(
        conn_id: str,
        *,
        host: str | None,
        login: str | None = None,
        password: str | None = None,
        port: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        value: dict[str, Any] = {"conn_type": "kapture", "host": host, "login": login, "password": password}
        if port is not None:
            value["port"] = port
        value["extra"] = extra or {}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))
        return conn_id

    return set_connection


@pytest.fixture
def kapture_fast_conn(kapture_emulator: KaptureEmulator, monkeypatch: pytest.MonkeyPatch) -> KaptureEmulator:
    """The emulator, with ``AIRFLOW_CONN_KAPTURE_DEFAULT`` pointing at it with :data:`FAST_RETRY_EXTRAS`."""
    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", kapture_emulator.connection_json(**FAST_RETRY_EXTRAS))
    return kapture_emulator


# --------------------------------------------------------------------------------------------------
# Real DAG runs with dag.test()
# --------------------------------------------------------------------------------------------------


_METADATA_DB_FIXTURE = "airflow_metadata_db"
_migration: subprocess.Popen[str] | None = None


def _start_metadata_db_migration() -> subprocess.Popen[str]:
    """Start ``airflow db migrate`` (a subprocess, so this process's airflow import stays untouched)."""
    global _migration
    if _migration is None:
        _migration = subprocess.Popen(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return _migration


TIERS = ("unit", "integration", "system")
#: The servers on loopback (``make setup`` starts them), and the fixtures that need them.
SERVERS = {"PostgreSQL": ("127.0.0.1", 5432), "MariaDB": ("127.0.0.1", 3306), "Redis": ("127.0.0.1", 6379)}
SERVER_FIXTURES = {
    "postgres_schema": "PostgreSQL",
    "mariadb_database": "MariaDB",
    "scaleout_databases": "PostgreSQL",
    "broker": "Redis",
}
#: Warehouse engines that are servers: ``tests/sync`` parametrises tests with them (``postgres``,
#: ``mariadb-connector``…) and picks the fixture at run time, so the parameter says what the test needs.
SERVER_ENGINES = {"postgres": "PostgreSQL", "mariadb": "MariaDB"}
#: Fixtures that run the ``airflow`` command end to end (each call starts Airflow afresh): the system tier.
CLI_FIXTURES = ("airflow_cli",)
#: Directories whose modules mix tiers: an unmarked test there is ``system`` when it uses a CLI fixture,
#: ``integration`` when it needs a server, else ``unit``.
TIERED_BY_FIXTURES = (Path(__file__).parent / "sync",)
#: Directories whose tests start a whole Airflow deployment: one xdist worker runs them one after another.
DEPLOYMENTS = (Path(__file__).parent / "scaleout", Path(__file__).parent / "ui")


def servers_of(item: pytest.Item) -> list[str]:
    """The servers ``item`` needs: through its fixtures, or (``tests/sync``) the engine it is parametrised with."""
    servers = {SERVER_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in SERVER_FIXTURES}
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(item.path.is_relative_to(folder) for folder in TIERED_BY_FIXTURES):
        engines = {value.split("-")[0] for value in callspec.params.values() if isinstance(value, str)}
        servers.update(SERVER_ENGINES[engine] for engine in engines & SERVER_ENGINES.keys())
    return sorted(servers)


@functools.cache
def server_down(name: str) -> str | None:
    """Why server ``name`` cannot be used (it does not accept a connection), or None."""
    host, port = SERVERS[name]
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        return f"{name} does not answer on {host}:{port} ({error}): `make setup` starts it"
    return None


def assign_tier(item: pytest.Item) -> str | None:
    """Check ``item``'s tier, or give it one from its fixtures (in :data:`TIERED_BY_FIXTURES`); a problem or None."""
    servers = servers_of(item)
    tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
    if tiers == {"unit"} and servers:
        return f"{item.nodeid} is marked unit but needs {' and '.join(servers)}: mark it integration"
    if not tiers:
        if not any(item.path.is_relative_to(folder) for folder in TIERED_BY_FIXTURES):
            return f"{item.nodeid} has no tier: add pytestmark = pytest.mark.unit (or integration, system)"
        if any(name in CLI_FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)
        else:
            item.add_marker(pytest.mark.integration if servers else pytest.mark.unit)
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its tier (or stop, naming the tests without one); then, if any selected test needs the
    metadata DB, migrate it in the background while the DB-free tests run."""
    problems = [problem for item in items if (problem := assign_tier(item))]
    if problems:
        raise pytest.UsageError("test tiers:\n  " + "\n  ".join(problems))
    for item in items:
        if any(item.path.is_relative_to(folder) for folder in DEPLOYMENTS):
            item.add_marker(pytest.mark.xdist_group("airflow-deployment"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test whose server is down fails, naming it (never a skip)."""
    for name in servers_of(item):
        if problem := server_down(name):
            pytest.fail(problem, pytrace=False)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    if any(_METADATA_DB_FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        _start_metadata_db_migration()


@pytest.fixture(scope="session")
def airflow_metadata_db() -> Path:
    """The isolated SQLite metadata DB, migrated once per session by ``airflow db migrate``."""
    migration = _start_metadata_db_migration()
    output, _ = migration.communicate(timeout=300)
    assert migration.returncode == 0, f"airflow db migrate failed:\n{output[-5000:]}"
    return AIRFLOW_TEST_HOME / "airflow.db"


@dataclass
class DagTestResult:
    """What one ``dag.test()`` run left in the metadata DB."""

    dag_run: Any
    task_states: dict[str, str | None]
    try_numbers: dict[str, int]

    @property
    def state(self) -> str:
        return str(self.dag_run.state)

    @property
    def data_interval(self) -> tuple[Any, Any]:
        return self.dag_run.data_interval_start, self.dag_run.data_interval_end

    def xcom(self, task_id: str, key: str = "return_value") -> Any:
        """The XCom value a task pushed in this run, or None."""
        from airflow.utils.session import create_session
        from sqlalchemy import select

        from kapture_provider.compat import AIRFLOW_V_3_0_PLUS

        if AIRFLOW_V_3_0_PLUS:
            from airflow.models.xcom import XComModel as xcom_table
        else:  # pragma: no cover - Airflow 2
            from airflow.models.xcom import BaseXCom as xcom_table  # type: ignore[no-redef]

        with create_session() as session:
            value = session.scalar(
                select(xcom_table.value).where(
                    xcom_table.dag_id == self.dag_run.dag_id,
                    xcom_table.run_id == self.dag_run.run_id,
                    xcom_table.task_id == task_id,
                    xcom_table.key == key,
                )
            )
        return xcom_table.deserialize_value(_XComRow(value)) if value is not None else None


def write_serialized_dag(dag: Any) -> None:
    """Store ``dag`` serialized in the ``dags-folder`` bundle, as Airflow 3's DAG processor does."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    from kapture_provider.compat import AIRFLOW_V_3_1_PLUS

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)  # the DAG row references its bundle
        session.flush()
        if AIRFLOW_V_3_1_PLUS:
            parsed = [LazyDeserializedDAG.from_dag(dag)]
            update_dag_parsing_results_in_db("dags-folder", None, parsed, {}, None, set(), session=session)
        else:  # 3.0: no parse duration, and the serialized form is built by hand, as its DagBag does
            from airflow.serialization.serialized_objects import SerializedDAG

            dag.relative_fileloc = dag.relative_fileloc or Path(dag.fileloc).name
            parsed = [LazyDeserializedDAG(data=SerializedDAG.to_dict(dag))]
            update_dag_parsing_results_in_db("dags-folder", None, parsed, {}, set(), session=session)


@dataclass
class _XComRow:
    value: Any


@pytest.fixture
def run_dag(airflow_metadata_db: Path) -> Iterator[Callable[..., DagTestResult]]:
    """Run a DAG with ``dag.test(logical_date=...)``, in-process, against the isolated metadata DB.

    ``run(dag)`` (a run without a logical date) or ``run(dag, logical_date)``, optionally with ``conf`` (the
    run's params); a run at the same logical date replaces the earlier one, so an interval can be re-run.

    On Airflow 3, ``dag.test()`` only runs DAGs that are serialized in the metadata DB (it otherwise
    looks for them in the dags folder and fails with "the dag is not serialized"), so the DAG is written
    there first, in the ``dags-folder`` bundle, as the DAG processor would. On Airflow 2 (which calls the
    logical date ``execution_date``) the DAG is synced to the DB the same way, so that its datasets exist.
    """
    from kapture_provider.compat import AIRFLOW_V_3_0_PLUS

    if not AIRFLOW_V_3_0_PLUS:  # pragma: no cover - Airflow 2
        # dag_run_note refers to FAB's ab_user: without its model, replacing a run cannot order the deletes
        import airflow.providers.fab.auth_manager.models  # noqa: F401

    def run(dag: Any, logical_date: Any = None, conf: dict[str, Any] | None = None) -> DagTestResult:
        if AIRFLOW_V_3_0_PLUS:
            write_serialized_dag(dag)
            dag_run = dag.test(logical_date=logical_date, run_conf=conf)
        else:  # pragma: no cover - Airflow 2
            dag.sync_to_db()  # its datasets too: an outlet event needs the dataset's row
            dag_run = dag.test(execution_date=logical_date, run_conf=conf)
        tis = dag_run.get_task_instances()
        return DagTestResult(
            dag_run=dag_run,
            task_states={ti.task_id: None if ti.state is None else str(ti.state) for ti in tis},
            try_numbers={ti.task_id: ti.try_number for ti in tis},
        )

    yield run
