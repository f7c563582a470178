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
import sys
from pathlib import Path

import pendulum
from airflow.providers.common.compat.sdk import DAG

from kapture_provider.compat import CronDataIntervalTimetable
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

if str(Path(__file__).parent) not in sys.path:  # Airflow 3.0's CLI leaves the DAGs folder off sys.path
    sys.path.append(str(Path(__file__).parent))
from kapture_erp_orders import CHANGED_ORDERS_SQL, KAPTURE_ORDERS, WINDOW_PARAMETERS, WINDOW_PARAMS

with DAG(
    dag_id="kapture_erp_order_sync",
    description="Push ERP orders changed in each hour to Kapture CRM",
    # A bare cron string would give data_interval_start == data_interval_end and select nothing.
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    params=WINDOW_PARAMS,
    max_active_runs=1,  # runs touching the same orders go one after the other, so the ledger decides
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=2)},
    tags=["kapture", "sync"],
) as dag:
    SqlToKaptureOrdersOperator(
        task_id="sync_changed_orders",
        sql_conn_id="erp_warehouse",
        sql=CHANGED_ORDERS_SQL,
        window_parameters=WINDOW_PARAMETERS,
        version_column="_version",
        # This run's own rows decide its state: up to 1% of them, or up to 3 whatever the ratio (a quiet
        # hour with one refused order stays green), may be invalid or refused; each is listed in the
        # summary and the ledger. Refused ones are retried by the next runs and parked after 3 refusals
        # in a row; the run fails if over 1,000 orders are still owed, or one has failed for over 3 days.
        max_failed_ratio=0.01,
        failure_floor=3,
        outlets=[KAPTURE_ORDERS],
    )
