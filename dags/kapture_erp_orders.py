"""What the example sync DAGs share: the warehouse queries, the window, params and assets.

A module without a DAG, so that importing it from a DAG file registers nothing twice (the DAGs folder
is on ``sys.path`` when Airflow parses DAG files and runs tasks).
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import Param

from kapture_provider.compat import make_asset

#: The sync tasks' outlet: downstream DAGs can be scheduled on it. It gets an event (the run's counts in
#: its extra) when a run delivered orders, and none when a run delivered nothing.
KAPTURE_ORDERS = make_asset(name="kapture_orders", uri="kapture://orders")

#: Every column the example sends, for each order of ``erp_orders``.
_ORDER_COLUMNS = """
SELECT order_id,
       customer_name,
       phone,
       email AS email_id,
       city,
       invoice_no,
       invoice_date,
       delivery_status,
       payment_mode,
       total_amount AS "order_info.associate_fields.total_amount"
"""
CHANGED_ORDERS_SQL = (
    _ORDER_COLUMNS.rstrip()
    + """,
       updated_at AS _version
FROM erp_orders
WHERE updated_at >= :start AND updated_at < :end
"""
)
#: The operator binds ``:start`` and ``:end`` to the run's window as UTC 'YYYY-MM-DD HH:MM:SS' text, which
#: SQLite stores and other engines cast: the data interval, or the ``window_start``/``window_end`` params.
WINDOW_PARAMETERS = ("start", "end")
#: Trigger a run with both set to sync a chosen window (UTC unless the value says otherwise).
WINDOW_PARAMS = {
    "window_start": Param(
        None, type=["null", "string"], format="date-time", description="Sync rows changed from (inclusive)"
    ),
    "window_end": Param(None, type=["null", "string"], format="date-time", description="…until (exclusive)"),
}

# The same columns for every order, with no time filter: the full-table diff (kapture_erp_order_full_diff)
# sends only the orders whose body differs from what Kapture last received, for ERPs without a trustworthy
# updated_at. The quoted alias works on every engine, MySQL/MariaDB included (they accept "..." as an alias).
ALL_ORDERS_SQL = _ORDER_COLUMNS + "FROM erp_orders\n"
