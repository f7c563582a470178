"""The sync tasks and their last runs, read through Airflow's public REST API as the page's user.

A sync task is a task of :class:`~kapture_provider.transfers.sql_to_kapture.SqlToKaptureOrdersOperator`.
The API server's own ``/api/v2`` is called with the caller's token, so Airflow applies the caller's
permissions: only the DAGs they may read come back. Each run's counts, rates and window come from the
summary the task returned (its ``return_value`` XCom); where its ledger lives, from the task instance's
rendered fields (``ledger_conn_id``, else ``sql_conn_id``, and ``ledger_table``) of its newest run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

OPERATOR = SqlToKaptureOrdersOperator.__name__
DEFAULT_LEDGER_TABLE = "kapture_order_sync_ledger"
#: Task instances read per page load (the newest first), across all sync tasks, in pages of the REST API's
#: default ``[api] maximum_page_limit``.
TASK_INSTANCES_READ = 500
PAGE_SIZE = 100


@dataclass(frozen=True)
class TaskRun:
    """One run of a sync task (one per shard when the task is mapped)."""

    run_id: str
    logical_date: str | None
    run_after: str | None
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

    @property
    def ledger(self) -> tuple[str, str] | None:
        """``(connection id, table)`` of its ledger, once known."""
        if self.ledger_conn_id is None or self.ledger_table is None:
            return None
        return self.ledger_conn_id, self.ledger_table


class RestApi:
    """Airflow's public REST API (``/api/v2``) of this API server, called as one user."""

    def __init__(self, base_url: str, token: str, transport: httpx.BaseTransport | None = None):
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v2",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            transport=transport,
        )

    def get(self, path: str, **params: Any) -> Any:
        """The JSON answer to ``GET path``, or None when it is 404; any other error raises."""
        answer = self._client.get(path, params=params)
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.json()

    def close(self) -> None:
        self._client.close()


def sync_tasks(api: RestApi, runs_per_task: int = 10) -> list[SyncTask]:
    """The sync tasks the API's user may read, by DAG and task id, each with its last runs."""
    instances: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    seen: set[tuple[str, str, str, int]] = set()  # a page may repeat an instance when runs start meanwhile
    for ti in _newest_task_instances(api):
        key = (ti["dag_id"], ti["task_id"], ti["dag_run_id"], ti["map_index"])
        if ti.get("operator") == OPERATOR and key not in seen:  # older API servers ignore the filter
            seen.add(key)
            instances[key[:2]].append(ti)
    return [
        _sync_task(api, dag_id, task_id, instances[(dag_id, task_id)], runs_per_task)
        for dag_id, task_id in sorted(instances)
    ]


def _newest_task_instances(api: RestApi) -> Iterator[dict[str, Any]]:
    """Up to :data:`TASK_INSTANCES_READ` task instances of the operator, newest first, a page at a time."""
    read = 0
    while read < TASK_INSTANCES_READ:
        page = api.get(
            "/dags/~/dagRuns/~/taskInstances", operator=OPERATOR, order_by="-run_after", offset=read, limit=PAGE_SIZE
        )
        listed = (page or {}).get("task_instances", [])
        yield from listed
        read += len(listed)
        if len(listed) < PAGE_SIZE:
            return


def _sync_task(api: RestApi, dag_id: str, task_id: str, tis: list[dict[str, Any]], runs: int) -> SyncTask:
    run_ids = list(dict.fromkeys(ti["dag_run_id"] for ti in tis))[:runs]  # newest first
    order = {run_id: position for position, run_id in enumerate(run_ids)}
    shown = sorted(
        (ti for ti in tis if ti["dag_run_id"] in order), key=lambda ti: (order[ti["dag_run_id"]], ti["map_index"])
    )
    task_runs = []
    for ti in shown:
        summary = _summary(api, ti)
        task_runs.append(
            TaskRun(
                run_id=ti["dag_run_id"], logical_date=ti.get("logical_date"), run_after=ti.get("run_after"),
                state=ti.get("state"), map_index=ti["map_index"], summary=_counts(summary), window=_window(summary),
            )
        )  # fmt: skip
    fields = next((ti.get("rendered_fields") for ti in shown if ti.get("rendered_fields")), None)
    if fields is None and shown:  # Airflow 3.1 lists task instances without them: ask for the newest one
        fields = (api.get(_task_instance_path(shown[0])) or {}).get("rendered_fields") or None
    return SyncTask(dag_id, task_id, *_ledger_location(fields), task_runs)


def _task_instance_path(ti: dict[str, Any]) -> str:
    dag_id, run_id, task_id = (quote(str(ti[key]), safe="") for key in ("dag_id", "dag_run_id", "task_id"))
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
    return path if ti["map_index"] < 0 else f"{path}/{ti['map_index']}"


def _summary(api: RestApi, ti: dict[str, Any]) -> Any:
    dag_id, run_id, task_id = (quote(str(ti[key]), safe="") for key in ("dag_id", "dag_run_id", "task_id"))
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    entry = api.get(path, map_index=ti["map_index"])
    return entry.get("value") if isinstance(entry, dict) else None


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
