"""Hourly ERP → Kapture order sync, safe to backfill.

Every hour, the orders of table ``erp_orders`` whose ``updated_at`` falls in the run's data interval
``[data_interval_start, data_interval_end)`` are pushed to Kapture. The change ledger (in the
warehouse) makes re-runs send nothing unchanged, keeps backfills from overwriting newer data, and
retries refused orders in later runs.

Connections: ``erp_warehouse`` (SQLite by default, PostgreSQL works unchanged) and ``kapture_default``.
Backfill a day: ``airflow backfill create --dag-id kapture_erp_order_sync
--from-date 2026-11-26T00:00:00+00:00 --to-date 2026-11-27T00:00:00+00:00`` (a scheduler runs it).
"""

from __future__ import annotations

import datetime as dt

import pendulum

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

#: Downstream DAGs can be scheduled on this: it is updated whenever the sync delivered orders.
KAPTURE_ORDERS = Asset(name="kapture_orders", uri="kapture://orders")

CHANGED_ORDERS_SQL = """
SELECT order_id,
       customer_name,
       phone,
       email AS email_id,
       city,
       invoice_no,
       invoice_date,
       delivery_status,
       payment_mode,
       total_amount AS "order_info.associate_fields.total_amount",
       updated_at AS _version
FROM erp_orders
WHERE updated_at >= :start AND updated_at < :end
"""
# Timestamps are compared in UTC as 'YYYY-MM-DD HH:MM:SS' text, which SQLite stores and PostgreSQL casts.
INTERVAL_PARAMETERS = {
    "start": "{{ data_interval_start.in_timezone('UTC').strftime('%Y-%m-%d %H:%M:%S') }}",
    "end": "{{ data_interval_end.in_timezone('UTC').strftime('%Y-%m-%d %H:%M:%S') }}",
}

with DAG(
    dag_id="kapture_erp_order_sync",
    description="Push ERP orders changed in each hour to Kapture CRM",
    # A bare cron string would give data_interval_start == data_interval_end and select nothing.
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # runs touching the same orders go one after the other, so the ledger decides
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=2)},
    tags=["kapture", "sync"],
) as dag:
    SqlToKaptureOrdersOperator(
        task_id="sync_changed_orders",
        sql_conn_id="erp_warehouse",
        sql=CHANGED_ORDERS_SQL,
        parameters=INTERVAL_PARAMETERS,
        version_column="_version",
        max_concurrency=8,
        # up to 1% of a run's rows may be invalid or refused; each is listed in the summary and the
        # ledger, and refused ones are retried by the next runs
        max_failed_ratio=0.01,
        outlets=[KAPTURE_ORDERS],
    )
