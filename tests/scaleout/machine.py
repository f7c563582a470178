"""The name of the machine a scale-out test's Celery worker stands for.

Airflow records the host each task instance ran on (``task_instance.hostname``) through ``[core]
hostname_callable``; every worker of the Celery test runs on this one machine, so each is given its own
name: ``AIRFLOW__CORE__HOSTNAME_CALLABLE=machine.hostname`` with ``KAPTURE_TEST_MACHINE`` in its
environment (and this folder on its ``PYTHONPATH``).
"""

from __future__ import annotations

import os


def hostname() -> str:
    return os.environ["KAPTURE_TEST_MACHINE"]
