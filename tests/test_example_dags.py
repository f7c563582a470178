"""The example DAG files are found by Airflow's DAG processor as users deploy them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

DAG_FILES = sorted(p for p in (Path(__file__).resolve().parent.parent / "dags").glob("*.py") if "DAG(" in p.read_text())


def test_every_dag_definition_is_checked() -> None:
    assert {p.name for p in DAG_FILES} == {
        "kapture_erp_order_full_diff.py",
        "kapture_erp_order_sync.py",
        "kapture_erp_order_sync_sharded.py",
        "kapture_update_order.py",
    }


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_passes_the_safe_mode_heuristic(path: Path) -> None:
    """With dag_discovery_safe_mode (the default) a file that never says "airflow" is not even parsed."""
    from airflow.utils.file import might_contain_dag_via_default_heuristic

    assert might_contain_dag_via_default_heuristic(str(path))
