"""OpenLineage facets of the operators: the tables a sync reads, its ledger, and the orders it writes to Kapture.

Imported only by the operators' ``get_openlineage_facets_*`` methods, which the OpenLineage provider calls,
so nothing imports OpenLineage where it is not installed. Input datasets and the SQL job facet come from
common-sql's and the OpenLineage provider's SQL parser, as ``SQLExecuteQueryOperator`` reports them. The
facets hold names, counts and the query text: never a row's values. See docs/lineage.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.providers.openlineage.extractors import OperatorLineage
from airflow.providers.openlineage.sqlparser import (
    DatabaseInfo,
    SQLParser,
    from_table_meta,
    get_openlineage_facets_with_sql,
)
from openlineage.client.event_v2 import Dataset, InputDataset, OutputDataset
from openlineage.client.facet_v2 import OutputDatasetFacet, RunFacet, output_statistics_output_dataset
from openlineage.common.sql import DbTableMeta

from kapture_provider.hooks.kapture import ORDER_PATH, KaptureHook

#: The run facet's key in the event's ``run.facets``.
RUN_FACET = "kaptureSync"
#: The default schema of engines whose hook gives OpenLineage no database info.
_DEFAULT_SCHEMAS = {"sqlite": "main", "duckdb": "main"}


@attrs.define
class KaptureSyncRunFacet(RunFacet):
    """One run's counts, by the names of the run summary the task returns (``None``: the operator has none)."""

    succeeded: int | None = None
    failed: int | None = None
    refused: int | None = None
    invalid: int | None = None
    unchanged: int | None = None
    stale: int | None = None
    parked: int | None = None
    still_owed: int | None = None
    rows_read: int | None = None
    requests: int | None = None
    dry_run: bool | None = None

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> KaptureSyncRunFacet:
        """The counts of a run summary (its lists of order ids and reasons left out)."""
        counts: dict[str, Any] = {f.name: summary.get(f.name) for f in attrs.fields(cls) if not f.inherited}
        return cls(**counts)


def sync_lineage(
    *,
    sql: str,
    source: DbApiHook,
    ledger: DbApiHook,
    ledger_table: str,
    kapture_conn_id: str,
    summary: Mapping[str, Any] | None,
) -> OperatorLineage:
    """``SqlToKaptureOrdersOperator``'s lineage: the query's tables and the ledger in, the ledger and Kapture out.

    ``source`` and ``ledger``: the hooks of the warehouse and of the ledger's database (which may be the same);
    ``summary``: the run's summary once it has one (the counts and ``rowCount``), else None.
    """
    lineage = _query_lineage(source, sql)
    ledger_dataset = _table_dataset(ledger, ledger_table)
    kapture = kapture_dataset(kapture_conn_id, None if summary is None else summary["succeeded"])
    return OperatorLineage(
        inputs=[*lineage.inputs, InputDataset(ledger_dataset.namespace, ledger_dataset.name)],
        outputs=[OutputDataset(ledger_dataset.namespace, ledger_dataset.name), *([kapture] if kapture else [])],
        run_facets={**lineage.run_facets, **_run_facets(summary)},
        job_facets=lineage.job_facets,
    )


def update_lineage(*, kapture_conn_id: str, summary: Mapping[str, Any] | None) -> OperatorLineage:
    """``UpdateOrderOperator``'s lineage: the orders it writes to Kapture."""
    kapture = kapture_dataset(kapture_conn_id, None if summary is None else summary["succeeded"])
    return OperatorLineage(outputs=[kapture] if kapture else [], run_facets=_run_facets(summary))


def kapture_dataset(kapture_conn_id: str, delivered: int | None) -> OutputDataset | None:
    """Kapture's orders as a dataset: namespace the connection's origin, name the add-update endpoint's path;
    with ``outputStatistics.rowCount`` = orders delivered once known. None when the connection is unusable."""
    try:
        base_url = KaptureHook(kapture_conn_id).settings.base_url
    except ValueError:  # no Host, a Host that is not a URL…: the task reports it; lineage has no name for it
        return None
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal
    namespace = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")  # never the userinfo
    output_facets: dict[str, OutputDatasetFacet] = {}
    if delivered is not None:
        output_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=delivered
        )
    return OutputDataset(namespace, parts.path.rstrip("/") + ORDER_PATH, outputFacets=output_facets)


def _run_facets(summary: Mapping[str, Any] | None) -> dict[str, RunFacet]:
    return {} if summary is None else {RUN_FACET: KaptureSyncRunFacet.from_summary(summary)}


def _conn_id(hook: DbApiHook) -> str:
    return str(getattr(hook, hook.conn_name_attr))


def _query_lineage(hook: DbApiHook, sql: str) -> OperatorLineage:
    """The query's input tables and SQL job facet, parsed as ``SQLExecuteQueryOperator`` parses its SQL."""
    lineage = get_openlineage_facets_with_sql(hook, sql, _conn_id(hook), database=None)
    if lineage is not None:
        return lineage
    info, parser = _fallback_parser(hook)  # a hook without OpenLineage database info
    return parser.generate_openlineage_metadata_from_sql(sql, hook, info, use_connection=False)


def _table_dataset(hook: DbApiHook, table: str) -> Dataset:
    """A table as OpenLineage names it in that connection's database (schema.table, the database's own form)."""
    info = hook.get_openlineage_database_info(hook.get_connection(_conn_id(hook)))
    if info is not None:
        default_schema = hook.get_openlineage_default_schema()
    else:
        info, parser = _fallback_parser(hook)
        default_schema = parser.default_schema
    meta = DbTableMeta(table if "." in table or not default_schema else f"{default_schema}.{table}")
    dataset = from_table_meta(meta, info.database, SQLParser.create_namespace(info), info.is_uppercase_names)
    return Dataset(dataset.namespace, dataset.name)


def _fallback_parser(hook: DbApiHook) -> tuple[DatabaseInfo, SQLParser]:
    """For a hook that gives OpenLineage no database info (SQLite's, DuckDB's): namespace
    ``<connection type>://<host>`` (the database file for those two) and the engine's default schema."""
    connection = hook.get_connection(_conn_id(hook))
    dialect = hook.dialect_name
    info = DatabaseInfo(scheme=connection.conn_type, authority=connection.host or None)
    return info, SQLParser(dialect=dialect, default_schema=_DEFAULT_SCHEMAS.get(dialect))
