"""Scale-out tests: real Airflow components (scheduler, API server, DAG processor, workers) running mapped shards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Children, admin


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "scaleout: runs DAGs through a real scheduler and executor with PostgreSQL (select with -m scaleout)",
    )


@pytest.fixture
def scaleout_databases() -> Iterator[dict[str, str]]:
    """Two fresh databases, named after this pytest process so that concurrent sessions never clash."""
    suffix = os.getpid()
    names = {"meta": f"kapture_scaleout_meta_{suffix}", "warehouse": f"kapture_scaleout_wh_{suffix}"}
    for name in names.values():
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin(f"CREATE DATABASE {name}")
    yield names
    for name in names.values():
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    procs = Children(tmp_path)
    yield procs
    procs.stop_all()
