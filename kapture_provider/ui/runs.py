"""The sync tasks and their last runs, read from Airflow's metadata database for the Kapture page.

A sync task is a task instance of :class:`~kapture_provider.transfers.sql_to_kapture.SqlToKaptureOrdersOperator`.
Each run's counts, rates and window come from the summary the task returned (its ``return_value`` XCom); where
its ledger lives, from the task's rendered template fields (``ledger_conn_id``, else ``sql_conn_id``, and
``ledger_table``) as the newest run rendered them. Runs on the API server only (Airflow 3.1+).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow.models.dagrun import DagRun
from airflow.models.renderedtifields import RenderedTaskInstanceFields
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

OPERATOR = SqlToKaptureOrdersOperator.__name__
DEFAULT_LEDGER_TABLE = "kapture_order_sync_ledger"


@dataclass(frozen=True)
class TaskRun:
    """One run of a sync task (one per shard when the task is mapped)."""

    run_id: str
    logical_date: datetime | None
    interval_start: datetime | None
    interval_end: datetime | None
    state: str | None  # the task instance's
    map_index: int
    summary: dict[str, Any] | None  # the summary's counts and rates; None until the task returned one
    window: dict[str, str] | None  # the window it synced (start, end, source), as its summary reports it


@dataclass(frozen=True)
class SyncTask:
    """A sync task of one DAG, where its ledger is, and its last runs (newest first)."""

    dag_id: str
    task_id: str
    ledger_conn_id: str | None  # None until a run rendered the task's fields
    ledger_table: str | None
    runs: list[TaskRun]


def sync_tasks(session: Session, dag_ids: Iterable[str], runs_per_dag: int = 10) -> list[SyncTask]:
    """The sync tasks of these DAGs (those with task instances of the sync operator), by DAG and task id."""
    pairs = session.execute(
        select(TaskInstance.dag_id, TaskInstance.task_id)
        .where(TaskInstance.operator == OPERATOR, TaskInstance.dag_id.in_(list(dag_ids)))
        .distinct()
    ).all()
    task_ids: dict[str, set[str]] = defaultdict(set)
    for dag_id, task_id in pairs:
        task_ids[dag_id].add(task_id)
    return [
        task
        for dag_id in sorted(task_ids)
        for task in _dag_sync_tasks(session, dag_id, sorted(task_ids[dag_id]), runs_per_dag)
    ]


def _dag_sync_tasks(session: Session, dag_id: str, task_ids: list[str], runs_per_dag: int) -> list[SyncTask]:
    dag_runs = session.scalars(
        select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc()).limit(runs_per_dag)
    ).all()
    run_ids = [run.run_id for run in dag_runs]
    in_runs = (TaskInstance.dag_id == dag_id, TaskInstance.run_id.in_(run_ids), TaskInstance.task_id.in_(task_ids))
    instances = session.execute(
        select(TaskInstance.task_id, TaskInstance.run_id, TaskInstance.map_index, TaskInstance.state).where(*in_runs)
    ).all()
    summaries = {
        (x.task_id, x.run_id, x.map_index): XComModel.deserialize_value(x)
        for x in session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id.in_(run_ids),
                XComModel.task_id.in_(task_ids),
                XComModel.key == "return_value",
            )
        )
    }
    rendered: dict[tuple[str, str], dict[str, Any]] = {
        (r.task_id, r.run_id): r.rendered_fields
        for r in session.scalars(
            select(RenderedTaskInstanceFields).where(
                RenderedTaskInstanceFields.dag_id == dag_id,
                RenderedTaskInstanceFields.run_id.in_(run_ids),
                RenderedTaskInstanceFields.task_id.in_(task_ids),
            )
        )
    }
    order = {run_id: position for position, run_id in enumerate(run_ids)}
    by_run = {run.run_id: run for run in dag_runs}
    tasks = []
    for task_id in task_ids:
        runs = [
            TaskRun(
                run_id=run_id,
                logical_date=by_run[run_id].logical_date,
                interval_start=by_run[run_id].data_interval_start,
                interval_end=by_run[run_id].data_interval_end,
                state=None if state is None else str(state),
                map_index=map_index,
                summary=_counts(summaries.get((task_id, run_id, map_index))),
                window=_window(summaries.get((task_id, run_id, map_index))),
            )
            for tid, run_id, map_index, state in sorted(instances, key=lambda i: (order[i[1]], i[2]))
            if tid == task_id
        ]
        fields = next((rendered[(task_id, r)] for r in run_ids if (task_id, r) in rendered), None)
        tasks.append(SyncTask(dag_id, task_id, *_ledger_location(fields), runs))
    return tasks


def _counts(summary: Any) -> dict[str, Any] | None:
    """The summary's scalar fields (counts, rates, flags); its lists of order ids and reasons are left out."""
    if not isinstance(summary, dict):
        return None
    return {k: v for k, v in summary.items() if isinstance(v, int | float | str | bool) or v is None}


def _window(summary: Any) -> dict[str, str] | None:
    window = summary.get("window") if isinstance(summary, dict) else None
    return window if isinstance(window, dict) else None


def _ledger_location(fields: dict[str, Any] | None) -> tuple[str | None, str | None]:
    if fields is None:
        return None, None
    return fields.get("ledger_conn_id") or fields.get("sql_conn_id"), fields.get("ledger_table") or DEFAULT_LEDGER_TABLE
