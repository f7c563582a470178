"""Manual fix of one order: trigger with the order id, the customer name and the fields to change."""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param

from kapture_provider.operators.update_order import UpdateOrderOperator

with DAG(
    dag_id="kapture_update_order",
    description="Update one Kapture order by hand",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "order_id": Param("23518265", type="string", minLength=1, description="Kapture order id"),
        "customer_name": Param("ABC", type="string", minLength=1, description="Customer the order belongs to"),
        "order_fields": Param(
            {"delivery_status": "Delivered", "remarks": "fixed by hand"},
            type="object",
            description='order_info fields to set, e.g. {"invoice_no": "3141341"}',
        ),
    },
    tags=["kapture", "manual"],
) as dag:
    UpdateOrderOperator(
        task_id="update_order",
        orders={
            "customer_info": {"customer_name": "{{ params.customer_name }}"},
            # native rendering turns this into a dict: the fields to change, the id and the update flag
            "order_info": "{{ dict(params.order_fields, order_id=params.order_id, update=True) }}",
        },
    )
