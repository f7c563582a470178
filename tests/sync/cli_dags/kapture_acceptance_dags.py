"""Airflow DAG of the sync acceptance suite (``tests/sync/test_acceptance_cli.py``), run by ``airflow dags test``.

``kapture_acceptance`` is the example hourly DAG's sync (its query, interval parameters and settings,
from ``kapture_erp_orders``) next to a sync of ``order_changes``, which holds several rows per order;
``kapture_acceptance_orders`` and ``kapture_acceptance_changes`` hold one of the two each (every task
costs ``airflow dags test`` seconds of start-up).
The ledgers live where ``KAPTURE_TEST_LEDGER_CONN_ID`` points (default: the warehouse); each sync has
its own ledger table, so that an order still owed by one is retried by that one.
"""

from __future__ import annotations

import os

import pendulum
from airflow.providers.common.compat.sdk import DAG
from kapture_erp_orders import CHANGED_ORDERS_SQL, WINDOW_PARAMETERS

from kapture_provider.compat import CronDataIntervalTimetable
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

ORDER_CHANGES_DDL = """CREATE TABLE order_changes (
    change_id INTEGER PRIMARY KEY,
    order_id VARCHAR(32) NOT NULL,
    customer_name VARCHAR(200),
    email VARCHAR(200),
    invoice_no VARCHAR(32),
    total_amount NUMERIC(12, 2),
    updated_at TIMESTAMP NOT NULL,
    _version INTEGER NOT NULL
)"""
ORDER_CHANGES_SQL = """
SELECT order_id,
       customer_name,
       email AS email_id,
       invoice_no,
       total_amount AS "order_info.associate_fields.total_amount",
       _version
FROM order_changes
WHERE updated_at >= :start AND updated_at < :end
"""
LEDGER_CONN_ID = os.environ.get("KAPTURE_TEST_LEDGER_CONN_ID") or None


def acceptance_dag(dag_id: str, *, orders: bool, changes: bool) -> DAG:
    """An hourly DAG with the example's sync of ``erp_orders`` and/or a sync of ``order_changes``."""
    with DAG(
        dag_id=dag_id,
        schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
        start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
        catchup=False,
        default_args={"retries": 0},
    ) as dag:
        common = {
            "sql_conn_id": "erp_warehouse",
            "window_parameters": WINDOW_PARAMETERS,
            "version_column": "_version",
            "ledger_conn_id": LEDGER_CONN_ID,
            "max_concurrency": 8,
        }
        if orders:
            SqlToKaptureOrdersOperator(task_id="sync_orders", sql=CHANGED_ORDERS_SQL, max_failed_ratio=0.01, **common)
        if changes:
            SqlToKaptureOrdersOperator(
                task_id="sync_changes", sql=ORDER_CHANGES_SQL, ledger_table="kapture_changes_ledger", **common
            )
    return dag


BOTH = acceptance_dag("kapture_acceptance", orders=True, changes=True)
ORDERS = acceptance_dag("kapture_acceptance_orders", orders=True, changes=False)
CHANGES = acceptance_dag("kapture_acceptance_changes", orders=False, changes=True)
