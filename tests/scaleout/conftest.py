"""Scale-out tests: real Airflow components (scheduler, API server, DAG processor) running mapped shards."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "scaleout: runs DAGs through a real scheduler with LocalExecutor and PostgreSQL (select with -m scaleout)",
    )
