"""What the hourly and the sharded sync DAGs share: the warehouse query, its interval parameters, the asset.

A module without a DAG, so that importing it from a DAG file registers nothing twice (the DAGs folder
is on ``sys.path`` when Airflow parses DAG files and runs tasks).
"""

from __future__ import annotations

from kapture_provider.compat import make_asset

#: Downstream DAGs can be scheduled on this: it is updated whenever the sync delivered orders.
KAPTURE_ORDERS = make_asset(name="kapture_orders", uri="kapture://orders")

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
