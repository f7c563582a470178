"""Nightly full-table diff ERP → Kapture: for ERPs whose ``updated_at`` cannot be trusted.

Every night the whole ``erp_orders`` table is compared, order by order, with the change ledger; only new
and changed orders (and those refused before) are sent. It shares the hourly DAG's ledger, whose lease keeps
their runs apart: one waits while the other runs, so no order is sent by both.

Connections: ``erp_warehouse`` (SQLite, PostgreSQL, MySQL/MariaDB or DuckDB) and ``kapture_default``.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pendulum
from airflow.providers.common.compat.sdk import DAG

from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

if str(Path(__file__).parent) not in sys.path:  # Airflow 3.0's CLI leaves the DAGs folder off sys.path
    sys.path.append(str(Path(__file__).parent))
from kapture_erp_orders import ALL_ORDERS_SQL, KAPTURE_ORDERS

with DAG(
    dag_id="kapture_erp_order_full_diff",
    description="Send every ERP order whose Kapture body changed, comparing the whole table with the ledger",
    schedule="30 2 * * *",  # nightly; the run needs no data interval
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5)},
    tags=["kapture", "sync"],
) as dag:
    SqlToKaptureOrdersOperator(
        task_id="sync_changed_orders",
        sql_conn_id="erp_warehouse",
        sql=ALL_ORDERS_SQL,  # no time filter, no version column: the ledger's body hashes decide
        max_concurrency=8,
        max_failed_ratio=0.01,
        failure_floor=3,
        outlets=[KAPTURE_ORDERS],
    )
