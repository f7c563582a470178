"""The OpenLineage provider's three operator methods, shared by the operators that report lineage.

Each returns the operator's ``_lineage()``, which imports :mod:`kapture_provider.lineage` (and so
OpenLineage) only when the provider asks for facets: nothing changes where it is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage


class ReportsLineage:
    """Mixed into an operator that defines ``_lineage()``."""

    def _lineage(self) -> OperatorLineage:
        raise NotImplementedError

    def get_openlineage_facets_on_start(self) -> OperatorLineage:
        """OpenLineage: the datasets the task reads and writes."""
        return self._lineage()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """As on start, with the run's counts and ``outputStatistics.rowCount`` = orders delivered."""
        return self._lineage()

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> OperatorLineage:
        """As on complete: a failed run has counts too when it got as far as its summary."""
        return self._lineage()
