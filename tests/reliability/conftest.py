"""Fixtures of the reliability and security campaign (``tests/reliability``).

The warehouse fixtures and the ``dag.test(logical_date=...)`` runner of ``tests/sync/conftest.py`` are
reused, not copied: that file is loaded under a module name of its own and its fixtures re-exported
here. ``airflow_metadata_db``, ``run_dag`` and ``kapture_emulator`` come from ``tests/conftest.py`` and
the provider's pytest plugin as usual.

Measured rows for ``docs/reliability.md`` are written with the ``reliability_report`` fixture: one JSON
line per call to the file named by ``KAPTURE_RELIABILITY_OUT`` (nothing is written when it is unset).
``scripts/reliability_table.py`` sets it, runs this directory and renders the table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_kit import EmulatorProcess, load_sync_fixtures

sync_fixtures = load_sync_fixtures()
sqlite_warehouse = sync_fixtures.sqlite_warehouse
run_dag_at = sync_fixtures.run_dag_at

REPORT_ENV = "KAPTURE_RELIABILITY_OUT"


@pytest.fixture
def reliability_report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``reliability_report(kind=..., **measured)``: append one measured row to ``$KAPTURE_RELIABILITY_OUT``."""

    def report(**row: Any) -> None:
        target = os.environ.get(REPORT_ENV)
        if not target:
            return
        line = json.dumps({"test": request.node.nodeid, **row}, default=str, sort_keys=True)
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    return report


@pytest.fixture(scope="module")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """One ``kapture-emulator`` subprocess for a whole module (reset by each test that uses it).

    A process of its own, like the real Kapture: the client under test does not share its interpreter
    lock with the server, which nearly doubles the throughput of the fault matrix.
    """
    process = EmulatorProcess(tmp_path_factory.mktemp("emulator"), record_bodies=False)
    try:
        yield process
    finally:
        process.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The reliability campaign runs longer than unit tests: give its tests a larger timeout."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(600))
