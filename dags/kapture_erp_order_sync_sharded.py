"""Hourly ERP → Kapture order sync, split into 4 shards that run in parallel (dynamic task mapping).

The same sync as ``kapture_erp_order_sync``; each mapped task handles the orders whose CRC-32 of the id
modulo 4 is its index, so shards never overlap, touch only their own ledger rows and can be retried alone;
each gets a quarter of ``max_requests_per_second``. Keep the ledger in PostgreSQL (concurrent writers), and
run this DAG *or* the hourly one, not both. How it behaves when a worker dies: docs/scale-out.md.

Connections: ``erp_warehouse`` and ``kapture_default``, as for ``kapture_erp_order_sync``.
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
