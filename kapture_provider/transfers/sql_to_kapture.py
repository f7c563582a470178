"""SqlToKaptureOrdersOperator: stream changed orders from any SQL connection into Kapture."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.compat import (
    AirflowException,
    AirflowFailException,
    Asset,
    BaseHook,
    BaseOperator,
    Context,
)
from kapture_provider.exceptions import KaptureSetupError
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.lineage_methods import ReportsLineage
from kapture_provider.metrics import RequestMetrics, emit_owed, emit_run, metrics_enabled, task_tags
from kapture_provider.payload import ORDER_ID_PATH, MappingError, NullValues, check_null_values
from kapture_provider.sync.dialect import LEDGER_DATABASES, quote_identifier
from kapture_provider.sync.engine import OrderSync, SyncSummary
from kapture_provider.sync.lease import Lease, LeaseHolder
from kapture_provider.sync.ledger import Ledger
from kapture_provider.sync.ledger_sql import LedgerNotSupported
from kapture_provider.sync.newest import NewestRowCheck, SourceInconsistency, newest_per_order
from kapture_provider.sync.run_log import RunLog
from kapture_provider.sync.source import Parameters, count_rows, describe, stream_rows, strip_sql
from kapture_provider.sync.times import parse_time
from kapture_provider.transfers.window import SyncWindow, WindowError, resolve_window

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

#: Failed and invalid orders listed in the task log at the end of a run (the summary lists more).
_LOGGED_PROBLEMS = 20
#: The counts an asset event carries in its ``extra``.
_EVENT_COUNTS = ("rows_read", "succeeded", "failed", "invalid", "unchanged", "stale", "retried")


class SqlToKaptureOrdersOperator(ReportsLineage, BaseOperator):
    """Read orders with a SQL query and add/update them in Kapture, sending only what changed.

    Columns map to the order body by name (see :mod:`kapture_provider.payload`); ``_``-prefixed
    columns are control columns and are never sent. Rows stream in chunks (a server-side cursor
    where the driver has one) and are pushed while reading, over pooled keep-alive connections.

    :param sql: the query (templated; a ``.sql`` file works). Named parameters may be written
        ``:name`` or ``%(name)s`` on any driver; they are bound by the driver, never formatted in.
    :param sql_conn_id: any connection whose hook is a common-sql ``DbApiHook`` (SQLite, PostgreSQL,
        MySQL/MariaDB, DuckDB, Snowflake, BigQuery…).
    :param parameters: query parameters (templated).
    :param window_parameters: names of two query parameters (e.g. ``("start", "end")``) that the operator
        binds to this run's window ``[start, end)`` as UTC text ``YYYY-MM-DD HH:MM:SS``: the ``window_start``/
        ``window_end`` params when a run sets them, else the data interval, else (a run without a logical
        date) since the last successful sync (see :mod:`kapture_provider.transfers.window`).
    :param kapture_conn_id: the Kapture connection.
    :param version_column: a column whose value orders the changes of one order (a version number or
        an ``updated_at``). Only each order's newest row in a run is sent (the rows folded are counted as
        ``duplicates``), and a row older than what Kapture already has is skipped as ``stale``
        (backfills never overwrite newer data).
    :param ledger_conn_id: where the change ledger lives: a SQLite, PostgreSQL, MySQL/MariaDB or DuckDB
        connection (default: ``sql_conn_id``, which must then be one of those).
    :param ledger_table: the ledger table (``name`` or ``schema.name``), created if missing.
    :param max_concurrency: the most requests in flight at once (default 64). Below it the number adapts:
        it grows while Kapture answers as fast as ever and shrinks when its answers slow down or it
        answers 429 (see docs/concurrency.md).
    :param concurrency: a fixed number of requests in flight instead of the adaptive one (default
        ``None``: adaptive).
    :param max_requests_per_second: optional ceiling, spread evenly over time across all workers.
    :param chunk_size: rows fetched and compared with the ledger at a time.
    :param dry_run: read, map, validate and compare with the ledger; send and record nothing.
    :param max_failed_ratio: of this run's own rows, the share that may be refused, undelivered or invalid
        (default 0). The task fails when both this and ``failure_floor`` are exceeded — after every other
        row has been delivered and recorded. Earlier runs' failures retried by this run do not count here.
    :param failure_floor: how many of this run's own rows may fail whatever the ratio (default 0), so
        that one refused order in a quiet hour (1 of 1) need not fail the run.
    :param max_owed_orders: the task fails when, after the run, more orders than this are still owed to
        Kapture (failed, retried by every run) in the ledger (default 1,000; ``None``: no limit).
    :param max_owed_age: the task fails when an owed order has been failing for longer than this
        (default 3 days; ``None``: no limit).
    :param park_after_refusals: an order Kapture refused this many times in a row (transient failures do
        not count) is parked: kept with its body and reason, listed, and no longer retried until its
        row changes (default 3; ``None``: retry refused orders in every run).
    :param timezone: timezone datetimes are written in.
    :param row_mapper: optional callable ``row dict -> partial nested body`` merged over the columns.
    :param null_values: what a NULL column becomes: ``"omit"`` (default) leaves the field out of the body, so
        Kapture keeps what it holds; ``"empty"`` sends ``""``, clearing the field (docs/null-values.md).
    :param shard_index: with ``shard_count`` > 1, handle only orders whose stable hash
        (``kapture_provider.sync.engine.shard_of``) falls in this shard. Expand it over
        ``range(shard_count)`` with dynamic task mapping to spread one sync over several workers; each
        shard gets ``max_requests_per_second / shard_count``.
    :param shard_count: how many shards the sync is split into (default 1: no sharding).
    :param count_rows: count the query's rows first (one ``COUNT(*)`` over it), so that progress lines say
        how far the run is and when it should end. Turn it off when running the query twice is costly.
    :param lease_timeout: seconds to wait while another run holds the ledger's lease for this shard (default
        an hour); past it the task fails naming that run. Runs of one ledger and shard never send at once;
        a dry run does not wait (it sends nothing).
    :return: the run summary (counts, duration, throughput, failed and invalid order ids with reasons).
    """

    template_fields: Sequence[str] = (
        "sql",
        "parameters",
        "sql_conn_id",
        "kapture_conn_id",
        "ledger_conn_id",
        "ledger_table",
    )
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql", "parameters": "json"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        sql: str,
        sql_conn_id: str,
        parameters: Parameters = None,
        window_parameters: tuple[str, str] | None = None,
        kapture_conn_id: str = KaptureHook.default_conn_name,
        version_column: str | None = None,
        ledger_conn_id: str | None = None,
        ledger_table: str = "kapture_order_sync_ledger",
        max_concurrency: int = 64,
        concurrency: int | None = None,
        max_requests_per_second: float | None = None,
        chunk_size: int = 1000,
        dry_run: bool = False,
        max_failed_ratio: float = 0.0,
        failure_floor: int = 0,
        max_owed_orders: int | None = 1000,
        max_owed_age: dt.timedelta | None = dt.timedelta(days=3),
        park_after_refusals: int | None = 3,
        timezone: str = "UTC",
        row_mapper: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
        null_values: NullValues = "omit",
        shard_index: int = 0,
        shard_count: int = 1,
        count_rows: bool = True,
        lease_timeout: float = 3600.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not 0 <= max_failed_ratio <= 1:
            raise ValueError("max_failed_ratio must be between 0 and 1")
        self.sql = sql
        self.sql_conn_id = sql_conn_id
        self.parameters = parameters
        self.window_parameters = tuple(window_parameters) if window_parameters else None
        self.kapture_conn_id = kapture_conn_id
        self.version_column = version_column
        self.ledger_conn_id = ledger_conn_id
        self.ledger_table = ledger_table
        self.max_concurrency = max_concurrency
        self.concurrency = concurrency
        self.max_requests_per_second = max_requests_per_second
        self.chunk_size = chunk_size
        self.is_dry_run = dry_run
        self.max_failed_ratio = max_failed_ratio
        self.failure_floor = failure_floor
        self.max_owed_orders = max_owed_orders
        self.max_owed_age = max_owed_age
        self.park_after_refusals = park_after_refusals
        self.timezone = timezone
        self.row_mapper = row_mapper
        self.null_values = check_null_values(null_values)
        self._run_summary: dict[str, Any] | None = None  # for OpenLineage, once the run has one
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.count_rows = count_rows
        self.lease_timeout = lease_timeout

    def execute(self, context: Context) -> dict[str, Any]:
        source = _db_hook(self.sql_conn_id)
        ledger = self._ledger(source)  # an engine that cannot hold it fails here: nothing read or sent yet
        run_log = RunLog(ledger.hook, self.ledger_table)
        window = self._window(context, run_log)
        parameters = self._parameters(window)
        self.log.info(
            "Kapture sync of %s; query parameters: %s",
            window.describe() if window else "every row the query returns (no window_parameters)",
            parameters,
        )
        rate = self.max_requests_per_second / self.shard_count if self.max_requests_per_second else None
        threads = self.concurrency or self.max_concurrency
        kapture = KaptureHook(
            self.kapture_conn_id, pool_size=threads, max_requests_per_second=rate,
            max_concurrency=self.max_concurrency, concurrency=self.concurrency,
        )  # fmt: skip
        metric_tags = self._metric_tags()
        if metric_tags is not None:
            kapture.metrics = RequestMetrics(metric_tags)
        if not self.is_dry_run:
            kapture.check_settings()
        engine = OrderSync(
            kapture,
            ledger,
            max_concurrency=threads,
            dry_run=self.is_dry_run,
            shard=(self.shard_index, self.shard_count),
            park_after_refusals=self.park_after_refusals,
            lease=self._lease(context, ledger),
        )
        check: NewestRowCheck | None = None
        chunks = None
        try:
            ledger.conn  # noqa: B018 - connect first: SQLite's switch to WAL must precede the open read
            sql, id_column = self._query(source, parameters)
            columns, chunks = stream_rows(source, sql, parameters, self.chunk_size)
            expected = self._expected_rows(source, sql, parameters, chunks.row_count)
            if id_column:
                quoted, shard = quote_identifier(source, id_column), (self.shard_index, self.shard_count)
                check = NewestRowCheck(columns, id_column, quoted, shard)
            summary = engine.run(
                columns, check.checked(chunks) if check else chunks, timezone=self.timezone,
                version_column=self.version_column, row_mapper=self.row_mapper, expected_rows=expected,
                null_values=self.null_values,
            )  # fmt: skip
        except (KaptureSetupError, MappingError, SourceInconsistency, LedgerNotSupported) as err:
            raise AirflowFailException(str(err)) from None  # Airflow retries cannot fix these
        finally:
            if chunks is not None:
                chunks.close()  # the warehouse connection, when the run stopped before the last row
            ledger.close()
            kapture.close()
        if check:  # the rows the query returned before each order's newest one was kept
            summary.rows_read += check.folded
            summary.duplicates += check.folded
        self._run_summary = summary.as_dict()
        if metric_tags is not None:
            self._emit_metrics(metric_tags, summary)
        result = self._report(context, summary, window)
        if window is not None and window.continues_the_schedule and not self.is_dry_run:
            ti = context["ti"]
            run_log.record(ti.dag_id, ti.task_id, self.shard_index, ti.run_id, window.start, window.end)
        return result

    def _expected_rows(self, source: DbApiHook, sql: str, parameters: Parameters, known: int | None) -> int | None:
        """The query's row count for the progress lines' ETA, or None: a failed count only costs the ETA.

        ``known``: the count the stream already has (SQLite's snapshot), so that the query does not run twice.
        """
        if not self.count_rows:
            return None
        if known is not None:
            return known
        try:
            return count_rows(source, sql, parameters)
        except Exception as err:
            self.log.warning("Counting the query's rows failed, progress lines show no ETA: %s", err)
            return None

    def _ledger(self, source: DbApiHook) -> Ledger:
        """The change ledger; a database that cannot hold it fails the task before anything is read or sent."""
        try:
            if self.ledger_conn_id:
                return Ledger(_db_hook(self.ledger_conn_id), self.ledger_table)
            return Ledger(source, self.ledger_table)
        except LedgerNotSupported as err:
            hint = (
                "point ledger_conn_id at another connection"
                if self.ledger_conn_id
                else f"the ledger defaults to the warehouse ({self.sql_conn_id!r}); set ledger_conn_id"
            )
            raise AirflowFailException(
                f"{err}. {hint.capitalize()} to a {LEDGER_DATABASES} database (the team's PostgreSQL, say); "
                "nothing was read or sent"
            ) from None

    def _lease(self, context: Context, ledger: Ledger) -> Lease:
        """The lease this run holds while it sends: one run at a time per ledger and shard."""
        ti = context.get("ti")  # absent when execute() is called outside a task run
        map_index = getattr(ti, "map_index", None)
        run_id = getattr(ti, "run_id", None) or "(no run id)"
        holder = LeaseHolder.this_process(self.dag_id, run_id, self.task_id, -1 if map_index is None else map_index)
        shard = (self.shard_index, self.shard_count)
        return Lease(ledger, holder, shard=shard, timeout=self.lease_timeout)

    def _window(self, context: Context, run_log: RunLog) -> SyncWindow | None:
        """This run's window, when the query is bound to one (``window_parameters``)."""
        if not self.window_parameters:
            return None
        ti = context["ti"]
        try:
            return resolve_window(context, lambda: run_log.last_synced_until(ti.dag_id, ti.task_id, self.shard_index))
        except WindowError as err:
            raise AirflowFailException(str(err)) from None

    def _parameters(self, window: SyncWindow | None) -> Parameters:
        """The query parameters, with the window's bounds bound to ``window_parameters``."""
        if window is None or self.window_parameters is None:
            return self.parameters
        if self.parameters is not None and not isinstance(self.parameters, Mapping):
            raise AirflowFailException("window_parameters need named query parameters (a dict), not a sequence")
        start_name, end_name = self.window_parameters
        return {**(self.parameters or {}), start_name: window.start_text, end_name: window.end_text}

    def _query(self, source: DbApiHook, parameters: Parameters) -> tuple[str, str | None]:
        """The query to stream, and with a version column the order id column it is de-duplicated by."""
        sql = strip_sql(self.sql)
        if not self.version_column:
            return sql, None
        columns = describe(source, sql, parameters)
        if self.version_column not in columns:
            raise ValueError(f"version_column {self.version_column!r} is not among the query's columns {columns}")
        id_column = next((c for c in columns if c in ("order_id", ORDER_ID_PATH)), None)
        if id_column is None:
            return sql, None  # the mapping reports the missing order id before anything is sent
        return newest_per_order(source, sql, id_column, self.version_column), id_column

    def _lineage(self) -> OperatorLineage:
        from kapture_provider.lineage import sync_lineage  # only with the OpenLineage provider installed

        source = _db_hook(self.sql_conn_id)
        return sync_lineage(
            sql=strip_sql(self.sql), source=source,
            ledger=_db_hook(self.ledger_conn_id) if self.ledger_conn_id else source, ledger_table=self.ledger_table,
            kapture_conn_id=self.kapture_conn_id, summary=self._run_summary,
        )  # fmt: skip

    def _metric_tags(self) -> dict[str, str] | None:
        """The tags of this task's metrics, or None when Airflow's metrics are off or this is a dry run."""
        if self.is_dry_run or not metrics_enabled():
            return None
        return task_tags(self.dag_id, self.task_id, self.shard_index if self.shard_count > 1 else None)

    def _emit_metrics(self, tags: dict[str, str], summary: SyncSummary) -> None:
        """This run's counters, and the ledger's owed orders as gauges."""
        emit_run(
            tags, requests=summary.requests, delivered=summary.succeeded, refused=summary.refused,
            undelivered=summary.failed - summary.refused, invalid=summary.invalid, unchanged=summary.unchanged,
            stale=summary.stale, parked=summary.parked,
        )  # fmt: skip
        emit_owed(tags, owed=summary.still_owed, oldest_owed_age=_age(summary.oldest_owed_since))

    def _report(self, context: Context, summary: SyncSummary, window: SyncWindow | None) -> dict[str, Any]:
        result = {**summary.as_dict(), "window": window.as_dict() if window else None}
        verb = "would send" if self.is_dry_run else "sent"
        self.log.info(
            "Kapture sync summary: %d rows read, %s %d (%d ok, %d failed), %d unchanged, %d stale, %d invalid, "
            "%d duplicates, %d of parked orders; earlier failures: %d retried (%d delivered, %d failed); "
            "%d parked now; still owed %d (failing since %s, up to %d attempts), %d parked in all; "
            "%d requests in %.1f s (%.1f orders/s)",
            summary.rows_read, verb, summary.to_send, summary.succeeded, summary.failed, summary.unchanged,
            summary.stale, summary.invalid, summary.duplicates, summary.parked_unchanged, summary.retried,
            summary.retried_delivered, summary.retried_failed, summary.parked, summary.still_owed,
            summary.oldest_owed_since or "-", summary.max_owed_attempts, summary.parked_total, summary.requests,
            summary.duration_seconds, summary.orders_per_second,
        )  # fmt: skip
        for problem in (summary.failed_orders + summary.invalid_rows)[:_LOGGED_PROBLEMS]:
            self.log.warning("Not delivered: %s", problem)
        reasons = self._failure_reasons(summary)
        if reasons:
            context["ti"].xcom_push(key="return_value", value=result)
            raise AirflowException(
                "; ".join(reasons) + f". Every other order was delivered and recorded in {self.ledger_table}; "
                "failed orders are retried by the next runs, invalid rows need fixing in the warehouse"
            )
        self._asset_events(context, result)
        return result

    def _failure_reasons(self, summary: SyncSummary) -> list[str]:
        """Why this run fails: Kapture down, too many of its own rows failed, or too much still owed."""
        reasons = []
        if summary.kapture_down:
            reasons.append(
                "Kapture was unavailable: sending stopped after too many orders in a row failed on retries, "
                "the rest were recorded as owed, with their bodies, for the next runs"
            )
        bad = summary.own_failed + summary.invalid
        if bad > self.failure_floor and summary.failure_ratio > self.max_failed_ratio:
            reasons.append(
                f"{summary.own_failed} failed and {summary.invalid} invalid of this run's {summary.rows_read} rows "
                f"({summary.failure_ratio:.2%} > max_failed_ratio {self.max_failed_ratio:.2%}, "
                f"{bad} > failure_floor {self.failure_floor})"
            )
        if self.max_owed_orders is not None and summary.still_owed > self.max_owed_orders:
            reasons.append(
                f"{summary.still_owed} orders still owed to Kapture (> max_owed_orders {self.max_owed_orders})"
            )
        age = _age(summary.oldest_owed_since)
        if self.max_owed_age is not None and age is not None and age > self.max_owed_age:
            reasons.append(
                f"an order owed to Kapture has been failing since {summary.oldest_owed_since} "
                f"(> max_owed_age {self.max_owed_age})"
            )
        return reasons

    def _asset_events(self, context: Context, result: Mapping[str, Any]) -> None:
        """The Asset outlets get an event only when orders were delivered, with the run's counts as its extra.

        Airflow emits an event for every Asset outlet of a successful task, reading ``outlets`` after
        ``execute`` from the task's copy made for this run; a run that delivered nothing drops them there.
        """
        assets = [outlet for outlet in self.outlets if isinstance(outlet, Asset)]
        if not result["succeeded"]:
            self.outlets = [outlet for outlet in self.outlets if outlet not in assets]
            return
        extra = {key: result[key] for key in _EVENT_COUNTS}
        if result["window"]:
            extra |= {"window_start": result["window"]["start"], "window_end": result["window"]["end"]}
        for asset in assets:
            context["outlet_events"][asset].extra.update(extra)


def _age(since: str | None) -> dt.timedelta | None:
    """How long ago a ledger time (UTC text) was."""
    if since is None:
        return None
    return dt.datetime.now(dt.UTC) - parse_time(since)


def _db_hook(conn_id: str) -> DbApiHook:
    hook = BaseHook.get_connection(conn_id).get_hook()
    if not isinstance(hook, DbApiHook):
        raise AirflowFailException(f"connection {conn_id!r} has no SQL (common-sql DbApiHook) hook")
    return hook
