"""Hourly ERP → Kapture order sync, split into 4 shards that run in parallel (dynamic task mapping).

The same sync as ``kapture_erp_order_sync`` (same query, same hourly data interval, same asset), for
when one task cannot push an hour's orders fast enough. ``SqlToKaptureOrdersOperator.partial(...)
.expand(shard_index=[0, 1, 2, 3])`` makes four mapped task instances of one task; each reads the
interval's rows and handles only the orders of its own shard:

* shard = a stable hash of the order id modulo N (``kapture_provider.sync.engine.shard_of``: CRC-32
  of the id's text), the same in every process and every run. An order belongs to exactly one shard,
  so shards never overlap: no order is delivered twice, and the orders one shard skips are exactly
  those the other shards send. Rows without a usable order id are reported by shard 0 only.
* The change ledger is keyed by order id, so each shard reads and writes only its own ledger rows,
  and retries only its own earlier failures. Shards never wait for one another, and a failed shard
  can be retried (or cleared) alone: the ledger makes it resend only what is not delivered yet.
* Each shard gets 1/N of ``max_requests_per_second``, so the whole sync never exceeds the budget
  given here, however many shards run at once.
* The shards are ordinary task instances: any executor runs them in parallel, each on a worker of
  its own (LocalExecutor processes, Celery workers, Kubernetes pods), within the executor's
  ``parallelism`` and the DAG's ``max_active_tasks``.

The ledger must live in a database that takes concurrent writers: PostgreSQL (point ``erp_warehouse``
or ``ledger_conn_id`` at it). SQLite works too (the ledger switches it to WAL with a busy timeout)
but serialises the shards' writes, and only on one machine, so its speed-up is small.

Run this DAG *or* ``kapture_erp_order_sync``, not both: they share the warehouse query and the
ledger, and two runs touching the same orders at once could both send an order.

Connections: ``erp_warehouse`` and ``kapture_default``, as for ``kapture_erp_order_sync``; the query,
its interval parameters and the asset come from ``kapture_erp_orders``, shared by both DAGs.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pendulum
from airflow.providers.common.compat.sdk import DAG

from kapture_provider.compat import CronDataIntervalTimetable
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

if str(Path(__file__).parent) not in sys.path:  # Airflow 3.0's CLI leaves the DAGs folder off sys.path
    sys.path.append(str(Path(__file__).parent))
from kapture_erp_orders import CHANGED_ORDERS_SQL, KAPTURE_ORDERS, WINDOW_PARAMETERS, WINDOW_PARAMS

SHARD_COUNT = 4
#: Requests per second for the whole sync; each shard gets ``MAX_REQUESTS_PER_SECOND / SHARD_COUNT``.
MAX_REQUESTS_PER_SECOND = 200.0

with DAG(
    dag_id="kapture_erp_order_sync_sharded",
    description=f"Push ERP orders changed in each hour to Kapture CRM, in {SHARD_COUNT} parallel shards",
    # A bare cron string would give data_interval_start == data_interval_end and select nothing.
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    params=WINDOW_PARAMS,
    max_active_runs=1,  # runs touching the same orders go one after the other, so the ledger decides
    max_active_tasks=SHARD_COUNT,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=2)},
    tags=["kapture", "sync", "sharded"],
) as dag:
    SqlToKaptureOrdersOperator.partial(
        task_id="sync_changed_orders",
        sql_conn_id="erp_warehouse",
        sql=CHANGED_ORDERS_SQL,
        window_parameters=WINDOW_PARAMETERS,
        version_column="_version",
        shard_count=SHARD_COUNT,
        max_requests_per_second=MAX_REQUESTS_PER_SECOND,
        max_concurrency=8,  # per shard
        # up to 1% of a shard's own rows, or 3 whatever the ratio, may be invalid or refused (per shard)
        max_failed_ratio=0.01,
        failure_floor=3,
        # the hourly DAG's asset: each shard that delivered orders adds an event to it
        outlets=[KAPTURE_ORDERS],
    ).expand(shard_index=list(range(SHARD_COUNT)))
