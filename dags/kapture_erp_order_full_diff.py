"""Nightly full-table diff ERP → Kapture: for ERPs whose ``updated_at`` cannot be trusted.

Every night the whole ``erp_orders`` table is read (no time filter) and compared, order by order, with
the change ledger: only the orders whose Kapture body differs from what Kapture last received are sent
(new orders, changed fields, and orders refused before). An unchanged table sends nothing. Reading,
mapping and comparing 1,000,000 orders took 27–34 s (medians) on a shared 2-core machine, memory flat (README).

Connections: ``erp_warehouse`` (SQLite by default; PostgreSQL, MySQL/MariaDB and DuckDB work unchanged)
and ``kapture_default``. The DAG can live next to the hourly Airflow DAG ``kapture_erp_order_sync``: both
use the same ledger, so an order one of them delivered is unchanged for the other. Their runs should not
overlap (both resend the orders still owed to Kapture: at once, each would be sent twice): put both tasks
in one Airflow pool of 1 slot (``pool=`` on each operator).
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
