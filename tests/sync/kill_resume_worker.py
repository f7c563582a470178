"""One sync of ``erp_orders`` into Kapture with SqlToKaptureOrdersOperator, run as a process of its own.

``test_kill_resume.py`` starts it, SIGKILLs it mid-run, then runs it again to completion.
Usage: ``python kill_resume_worker.py SUMMARY_JSON_PATH``. The connections come from the environment
(``AIRFLOW_CONN_ERP_WAREHOUSE``, ``AIRFLOW_CONN_KAPTURE_DEFAULT``); the summary is written as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MAX_CONCURRENCY = 8
SQL = """
SELECT order_id,
       customer_name,
       phone,
       email AS email_id,
       city,
       invoice_no,
       total_amount AS "order_info.associate_fields.total_amount",
       updated_at AS _version
FROM erp_orders
"""


def main(argv: list[str]) -> int:
    from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

    operator = SqlToKaptureOrdersOperator(
        task_id="kill_resume",
        sql_conn_id="erp_warehouse",
        sql=SQL,
        version_column="_version",
        max_concurrency=MAX_CONCURRENCY,
        chunk_size=100,
        max_failed_ratio=0.01,
    )
    summary = operator.execute({})  # type: ignore[arg-type]
    Path(argv[1]).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
