"""The one module that knows which Airflow is installed (2.11 and 3.x).

Everything else imports Airflow's public names from here. ``apache-airflow-providers-common-compat``
provides the shims for most of them; the few it has none for are written out below.
"""

from __future__ import annotations

from typing import Any

from airflow import __version__ as _airflow_version
from airflow.providers.common.compat.sdk import (
    DAG,
    AirflowException,
    AirflowFailException,
    AirflowNotFoundException,
    AirflowPlugin,
    Asset,
    BaseHook,
    BaseOperator,
    Connection,
    Context,
    Param,
    Stats,
    conf,
    mask_secret,
    redact,
)
from packaging.version import Version

# Our own version flags, as common-compat's version_compat asks providers to keep (not import from it).
AIRFLOW_VERSION = Version(_airflow_version)
AIRFLOW_V_3_0_PLUS = AIRFLOW_VERSION.release[:2] >= (3, 0)
AIRFLOW_V_3_1_PLUS = AIRFLOW_VERSION.release[:2] >= (3, 1)
AIRFLOW_V_3_2_PLUS = AIRFLOW_VERSION.release[:2] >= (3, 2)

try:  # in airflow.sdk from 3.2 on
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # pragma: no cover - older Airflow
    from airflow.timetables.interval import CronDataIntervalTimetable  # type: ignore[no-redef,assignment]


def make_asset(name: str, uri: str) -> Any:
    """An ``Asset(name=, uri=)`` on Airflow 3, a ``Dataset(uri)`` (which has no name) on Airflow 2."""
    if AIRFLOW_V_3_0_PLUS:
        return Asset(name=name, uri=uri)
    return Asset(uri)  # pragma: no cover - Airflow 2


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_0_PLUS",
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "DAG",
    "AirflowException",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowPlugin",
    "Asset",
    "BaseHook",
    "BaseOperator",
    "Connection",
    "Context",
    "CronDataIntervalTimetable",
    "Param",
    "Stats",
    "conf",
    "make_asset",
    "mask_secret",
    "redact",
]
