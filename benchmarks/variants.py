"""The measured workloads: the same orders from the same SQLite warehouse, sent three ways.

* ``requests`` (A): what users write today, a sequential loop of ``requests.post`` on one Session;
* ``http_hook`` (B): the Airflow-native peer, ``HttpHook.run()`` once per order;
* ``ours``: ``SqlToKaptureOrdersOperator.execute()`` — stream_rows + Ledger + KaptureHook + OrderSync.

Each :class:`Task` runs in a fresh child process (:mod:`benchmarks.isolation`); :func:`measure` wraps
the workload with wall time, CPU time of the whole process (every thread) and peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import airflow.sdk.execution_time.supervisor  # noqa: F401 - loaded in every Airflow worker before a task runs
import requests
from airflow.providers.http.hooks.http import HttpHook
from kapture_erp_orders import ALL_ORDERS_SQL, CHANGED_ORDERS_SQL

from benchmarks.fixtures import DAY_END, DAY_START, EMULATOR_PASSWORD, EMULATOR_USER, status_kb
from kapture_provider.hooks.kapture import ORDER_PATH, KaptureHook
from kapture_provider.payload import OrderMapper
from kapture_provider.sync.ledger import DELIVERED, Ledger, Outcome
from kapture_provider.sync.source import stream_rows
from kapture_provider.transfers import sql_to_kapture
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

WAREHOUSE_CONN_ID = "bench_warehouse"
KAPTURE_CONN_ID = "bench_kapture"
HTTP_CONN_ID = "bench_kapture_http"
TIMESTAMP = "%Y-%m-%d %H:%M:%S"
ORDERS_SQL = CHANGED_ORDERS_SQL  # the example DAGs' query, run over the benchmark day
DAY = {"start": DAY_START.strftime(TIMESTAMP), "end": DAY_END.strftime(TIMESTAMP)}
#: An interval with no orders at all (the hour after the benchmark day).
EMPTY_HOUR = {"start": DAY_END.strftime(TIMESTAMP), "end": DAY_END.replace(hour=1).strftime(TIMESTAMP)}


@dataclass(frozen=True)
class Task:
    """One measured run. ``variant`` is a key of :data:`VARIANTS`."""

    variant: str
    warehouse: str
    emulator_url: str = ""
    max_concurrency: int = 64  # the operator's default
    max_requests_per_second: float | None = None
    dry_run: bool = False
    repeat: int = 1  # operator_noop: execute() this many times in one process
    profile: bool = False
    realtime: bool = False  # run under SCHED_RR (see realtime() below)
    options: dict[str, Any] = field(default_factory=dict)


def measure(task: Task) -> dict[str, Any]:
    """Run ``task`` in this (fresh) process and return what it did and cost."""
    _set_connections(task)
    if task.realtime:
        realtime()
    rss_at_start_kb = status_kb("VmRSS")
    epoch, wall, cpu = time.time(), time.perf_counter(), time.process_time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if task.profile:
        from benchmarks.profiling import ThreadProfiler

        with ThreadProfiler() as profiler:
            result = VARIANTS[task.variant](task)
        result["profile"] = profiler.report()
    else:
        result = VARIANTS[task.variant](task)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        started_at=epoch,
        wall_s=wall,
        cpu_s=cpu,
        user_s=after.ru_utime - usage.ru_utime,
        sys_s=after.ru_stime - usage.ru_stime,
        rss_at_start_mb=rss_at_start_kb / 1024,
        peak_rss_mb=after.ru_maxrss / 1024,
    )
    return result


# -- A: requests.post in a loop --------------------------------------------------------------------
def requests_loop(task: Task) -> dict[str, Any]:
    """What users write today: read the rows, build each body, POST it, check the answer."""
    sent = 0
    session = requests.Session()
    with closing(sqlite3.connect(task.warehouse)) as conn:
        for row in conn.execute(ORDERS_SQL, DAY):
            response = session.post(
                task.emulator_url + ORDER_PATH,
                json=order_body(row),
                auth=(EMULATOR_USER, EMULATOR_PASSWORD),
                timeout=30,
            )
            response.raise_for_status()
            if response.json().get("status") != "success":
                raise RuntimeError(f"order {row[0]} was refused: {response.text[:200]}")
            sent += 1
    session.close()
    return {"sent": sent}


# -- B: HttpHook.run() per order -------------------------------------------------------------------
def http_hook_loop(task: Task) -> dict[str, Any]:
    """The Airflow-native peer: the same loop through ``HttpHook`` (connection ``conn_type`` http)."""
    sent = 0
    hook = HttpHook(method="POST", http_conn_id=HTTP_CONN_ID)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    with closing(sqlite3.connect(task.warehouse)) as conn:
        for row in conn.execute(ORDERS_SQL, DAY):
            response = hook.run(ORDER_PATH, data=json.dumps(order_body(row)), headers=headers)
            if response.json().get("status") != "success":
                raise RuntimeError(f"order {row[0]} was refused: {response.text[:200]}")
            sent += 1
    return {"sent": sent}


def order_body(row: tuple[Any, ...]) -> dict[str, Any]:
    """The Kapture body of one ``ORDERS_SQL`` row, written by hand as a user would."""
    order_id, name, phone, email, city, invoice_no, invoice_date, status, payment, amount, _ = row
    return {
        "customer_info": {"customer_name": name, "phone": phone, "email_id": email, "city": city},
        "order_info": {
            "order_id": order_id,
            "invoice_no": invoice_no,
            "invoice_date": invoice_date,
            "delivery_status": status,
            "payment_mode": payment,
            "associate_fields": {"total_amount": amount},
            "update": True,
        },
    }


# -- ours: the operator ----------------------------------------------------------------------------
def operator_sync(task: Task) -> dict[str, Any]:
    """``SqlToKaptureOrdersOperator.execute()`` as the example DAG configures it (version column)."""
    with _capture_hooks() as hooks:
        summary = _operator(task, DAY).execute({})  # type: ignore[arg-type]
    throttle = hooks[0].throttle
    # the controller's rate over time, its monotonic clock mapped onto the emulator's epoch clock
    offset = time.time() - time.monotonic()
    history = [(at + offset, rate) for at, rate in throttle.history]
    # the answers' round trip as the hook timed it (adaptive mode only): send → answer, smoothed and best
    smoothed, fastest = throttle._latency, throttle._fastest
    round_trip = {"smoothed_ms": 1000 * smoothed if smoothed else None, "fastest_ms": 1000 * fastest}
    return {"sent": summary["succeeded"], "summary": summary, "rate_history": history, "round_trip": round_trip}


def operator_noop(task: Task) -> dict[str, Any]:
    """``execute()`` for an interval without changed rows, ``repeat`` times: each call's duration."""
    durations, summaries = [], []
    for _ in range(task.repeat):
        started = time.perf_counter()
        summaries.append(_operator(task, EMPTY_HOUR).execute({}))  # type: ignore[arg-type]
        durations.append(time.perf_counter() - started)
    return {"sent": sum(s["succeeded"] for s in summaries), "durations_s": durations, "summary": summaries[-1]}


def seed_ledger(task: Task) -> dict[str, Any]:
    """Fill the warehouse's ledger with ``options['orders']`` delivered orders, in SQL (not timed as a run)."""
    count = int(task.options["orders"])
    ledger = Ledger(_warehouse_hook())
    ledger.create()
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    ledger.conn.execute(
        f"""WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {count})
        INSERT INTO {ledger.table} (order_id, status, body_hash, version, attempts, first_seen_at,
                                    last_attempt_at, delivered_at)
        SELECT printf('%08d', 23500000 + i), 'delivered', lower(hex(randomblob(32))),
               't:2026-11-26 00:00:00.000000', 1, ?, ?, ? FROM n""",
        (now, now, now),
    )
    ledger.conn.commit()
    rows = ledger.conn.execute(f"SELECT COUNT(*) FROM {ledger.table}").fetchone()[0]
    ledger.close()
    return {"sent": 0, "ledger_rows": rows}


def full_table_diff(task: Task) -> dict[str, Any]:
    """The full-table diff: ``ALL_ORDERS_SQL`` (no time filter, no version column) against a seeded ledger."""
    summary = SqlToKaptureOrdersOperator(
        task_id="bench_full_diff",
        sql=ALL_ORDERS_SQL,
        sql_conn_id=WAREHOUSE_CONN_ID,
        kapture_conn_id=KAPTURE_CONN_ID,
        max_concurrency=task.max_concurrency,
        chunk_size=int(task.options.get("chunk_size", 1000)),
    ).execute({})  # type: ignore[arg-type]
    return {"sent": summary["succeeded"], "summary": summary}


def seed_diff_ledger(task: Task) -> dict[str, Any]:
    """Record every order as delivered with the body hash ``ALL_ORDERS_SQL`` gives it (not timed as a run)."""
    hook = _warehouse_hook()
    ledger = Ledger(hook)
    ledger.create()
    columns, chunks = stream_rows(hook, ALL_ORDERS_SQL, None, 10_000)
    mapper = OrderMapper(columns, timezone="UTC")
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    rows = 0
    for chunk in chunks:
        orders = [mapper.prepare(row) for row in chunk]
        ledger.record([Outcome(o.order_id, DELIVERED, o.body_hash) for o in orders], now)
        rows += len(orders)
    ledger.close()
    return {"sent": 0, "ledger_rows": rows}


def _operator(task: Task, interval: dict[str, str]) -> SqlToKaptureOrdersOperator:
    return SqlToKaptureOrdersOperator(
        task_id="bench_sync",
        sql=ORDERS_SQL,
        sql_conn_id=WAREHOUSE_CONN_ID,
        parameters=interval,
        kapture_conn_id=KAPTURE_CONN_ID,
        version_column="_version",
        max_concurrency=task.max_concurrency,
        max_requests_per_second=task.max_requests_per_second,
        dry_run=task.dry_run,
        chunk_size=int(task.options.get("chunk_size", 1000)),
    )


@contextmanager
def _capture_hooks() -> Iterator[list[KaptureHook]]:
    """Keep the KaptureHook the operator creates, to read its throttle afterwards."""
    created: list[KaptureHook] = []

    class RecordingKaptureHook(KaptureHook):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            created.append(self)

    with mock.patch.object(sql_to_kapture, "KaptureHook", RecordingKaptureHook):
        yield created


def realtime(priority: int = 10) -> None:
    """Schedule this process (and the threads it starts later) round-robin at a real-time priority.

    Only for the latency-bound runs, which use a fraction of a core: a shared machine's other work then
    cannot delay their wake-ups. Without the permission, the run stays at the normal policy.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except (OSError, AttributeError):
        pass


def _warehouse_hook() -> Any:
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook()


def _set_connections(task: Task) -> None:
    os.environ[f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}"] = json.dumps(
        {"conn_type": "sqlite", "host": task.warehouse}
    )
    if task.emulator_url:
        host, port = task.emulator_url.removeprefix("http://").rsplit(":", 1)
        os.environ[f"AIRFLOW_CONN_{KAPTURE_CONN_ID.upper()}"] = json.dumps(
            {"conn_type": "kapture", "host": task.emulator_url, "login": EMULATOR_USER, "password": EMULATOR_PASSWORD}
        )
        os.environ[f"AIRFLOW_CONN_{HTTP_CONN_ID.upper()}"] = json.dumps(
            {"conn_type": "http", "host": host, "port": int(port), "schema": "http",
             "login": EMULATOR_USER, "password": EMULATOR_PASSWORD}
        )  # fmt: skip


VARIANTS: dict[str, Callable[[Task], dict[str, Any]]] = {
    "requests": requests_loop,
    "http_hook": http_hook_loop,
    "ours": operator_sync,
    "operator_noop": operator_noop,
    "seed_ledger": seed_ledger,
    "full_table_diff": full_table_diff,
    "seed_diff_ledger": seed_diff_ledger,
}
