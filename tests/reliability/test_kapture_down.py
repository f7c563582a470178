"""Kapture down for a whole run, and refused credentials, as the task sees them.

**Kapture down** (nothing listening on the port): the circuit breaker of ``OrderSync`` stops sending
after ``max_consecutive_transient`` (N, default 32) orders in a row exhausted their retries. With C
requests in flight (``max_concurrency``) at most N + C - 1 orders are ever attempted, each at most
R + 1 times (``max_retries`` R), so the task fails within

    (ceil((N + C - 1) / C) + 1) × T_order  + the local time to read, validate and record the rows,
    T_order = (R + 1) × connect_timeout + sum(min(backoff_max, backoff_base × 2**a) for a in range(R))

(list scheduling of N + C - 1 orders of at most T_order each on C workers). A refused connection fails
at once, so T_order is then just the backoff sum; ``connect_timeout`` bounds a host that drops packets.
Every row not delivered stays in the ledger as ``failed`` with its ``pending_body``, and the next run —
of another interval — delivers them once Kapture is back.

**Refused credentials** through the real example DAG (``retries=2``, ``retry_delay`` 2 minutes): the
task fails on its first try with no Airflow retry, and a run after the fix delivers everything.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

import pytest
from reliability_kit import (
    EXAMPLE_TASK_ID,
    FAST_BACKOFF,
    FakeTaskInstance,
    assert_accounting,
    assert_store_matches,
    breaker_parameters,
    by_status,
    down_bound,
    expected_orders,
    free_port,
    kapture_conn_json,
    ledger_rows,
    load_example_dag,
)

from kapture_provider.compat import AirflowException, AirflowFailException
from kapture_provider.hooks.kapture import MAX_RETRY_AFTER, KaptureSettings
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.testing.warehouse import generate_orders
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

pytestmark = pytest.mark.unit

HOUR_1 = {"start": "2026-11-26 01:00:00", "end": "2026-11-26 02:00:00"}
HOUR_2 = {"start": "2026-11-26 02:00:00", "end": "2026-11-26 03:00:00"}
MAX_RETRIES, CONNECT_TIMEOUT = 2, 1.0
#: Reading, validating and recording 2,000 rows without a request (measured: well under 2 s here).
LOCAL_WORK_ALLOWANCE = 20.0


def test_default_bound_is_documented(reliability_report: Any) -> None:
    """The bound with the defaults, computed from the code; docs/reliability.md shows these numbers."""
    n, c = breaker_parameters()
    d = KaptureSettings("https://x", "Basic x")
    r = d.max_retries
    backoff = sum(min(d.backoff_max, d.backoff_base * 2**a) for a in range(r))
    bounds = {
        "refused": down_bound(n, c, r, 0.0, d.backoff_base, d.backoff_max),
        "dropped": down_bound(n, c, r, d.connect_timeout, d.backoff_base, d.backoff_max),
        "hung": down_bound(n, c, r, d.connect_timeout + d.timeout, d.backoff_base, d.backoff_max),
    }
    reliability_report(
        kind="down-bound",
        max_consecutive_transient=n,
        max_concurrency=c,
        max_retries=r,
        backoff_base=d.backoff_base,
        backoff_max=d.backoff_max,
        backoff_sum=backoff,
        connect_timeout=d.connect_timeout,
        timeout=d.timeout,
        max_retry_after=MAX_RETRY_AFTER,
        waves=math.ceil((n + c - 1) / c) + 1,
        **{f"bound_{name}": value for name, value in bounds.items()},
    )
    assert (n, c, r, d.connect_timeout, d.backoff_base, d.backoff_max) == (32, 64, 5, 10.0, 0.5, 30.0)
    assert bounds["refused"] == pytest.approx(3 * 15.5) and bounds["dropped"] == pytest.approx(3 * (60 + 15.5))


def operator_kwargs(parameters: dict[str, str]) -> dict[str, Any]:
    task = load_example_dag().get_task(EXAMPLE_TASK_ID)
    return {
        "sql_conn_id": task.sql_conn_id,
        "sql": task.sql,
        "parameters": dict(parameters),
        "version_column": task.version_column,
        "max_concurrency": task.max_concurrency,
        "max_failed_ratio": task.max_failed_ratio,
    }


def test_kapture_down_fails_within_bound_and_next_interval_delivers(
    sqlite_warehouse: Any, monkeypatch: pytest.MonkeyPatch, reliability_report: Any
) -> None:
    port = free_port()  # nothing listens here until the emulator is started on it below
    extras = {**FAST_BACKOFF, "max_retries": MAX_RETRIES, "connect_timeout": CONNECT_TIMEOUT}
    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", kapture_conn_json(f"http://127.0.0.1:{port}", **extras))
    day = dt.datetime(2026, 11, 26)
    hour_1 = list(generate_orders(2000, day + dt.timedelta(hours=1), day + dt.timedelta(hours=2), invalid=3))
    hour_2 = list(generate_orders(200, day + dt.timedelta(hours=2), day + dt.timedelta(hours=3), first_id=24_000_000))
    sqlite_warehouse.insert_orders(hour_1 + hour_2)
    db = sqlite_warehouse.path
    sql = operator_kwargs(HOUR_1)["sql"]
    expected_1, expected_2 = expected_orders(db, sql, HOUR_1), expected_orders(db, sql, HOUR_2)
    n, c = breaker_parameters()
    bound = down_bound(n, c, MAX_RETRIES, CONNECT_TIMEOUT, FAST_BACKOFF["backoff_base"], FAST_BACKOFF["backoff_max"])

    ti = FakeTaskInstance()
    started = time.monotonic()
    with pytest.raises(AirflowException) as failure:
        SqlToKaptureOrdersOperator(task_id="down", **operator_kwargs(HOUR_1)).execute({"ti": ti})  # type: ignore[arg-type]
    elapsed = time.monotonic() - started

    assert not isinstance(failure.value, AirflowFailException), "Kapture down must stay retryable by Airflow"
    assert "Kapture was unavailable" in str(failure.value)
    summary = ti.xcom["return_value"]
    assert_accounting(summary)
    assert summary["kapture_down"] is True
    assert (summary["rows_read"], summary["invalid"], summary["failed"]) == (2000, 3, 1997)
    assert summary["requests"] <= (n + c - 1) * (MAX_RETRIES + 1), "the breaker did not stop the requests"
    assert elapsed < bound + LOCAL_WORK_ALLOWANCE, f"{elapsed:.1f} s, documented bound {bound:.1f} s"
    ledger = ledger_rows(db)
    for order_id, order in expected_1.valid.items():
        entry = ledger[order_id]
        assert entry["status"] == "failed" and entry["delivered_at"] is None
        assert (entry["pending_body"].encode(), entry["pending_hash"]) == (order.data, order.body_hash)
        assert "refused the connection" in entry["last_error"] or "not sent: Kapture unavailable" in entry["last_error"]
    assert by_status(ledger, "invalid") == set(expected_1.invalid)
    pending_after_failure = sum(1 for entry in ledger.values() if entry["pending_body"] is not None)

    with KaptureEmulator(port=port) as emulator:  # Kapture is back, on the same address
        recovery = SqlToKaptureOrdersOperator(task_id="recovered", **operator_kwargs(HOUR_2)).execute(
            {"ti": FakeTaskInstance()}  # type: ignore[arg-type]
        )
        stored = emulator.orders
        requests = [r for r in emulator.requests if r.path == ADD_UPDATE_PATH]

    assert_accounting(recovery)
    assert (recovery["rows_read"], recovery["retried"]) == (200, 1997)
    assert (recovery["succeeded"], recovery["failed"]) == (2197, 0)
    assert len(requests) == 2197 and all(r.stored for r in requests)
    assert set(stored) == set(expected_1.valid) | set(expected_2.valid)
    assert_store_matches(stored, expected_1, expected_1.valid)
    assert_store_matches(stored, expected_2, expected_2.valid)
    ledger = ledger_rows(db)
    for order_id, order in {**expected_1.valid, **expected_2.valid}.items():
        assert (ledger[order_id]["status"], ledger[order_id]["body_hash"]) == ("delivered", order.body_hash)
        assert ledger[order_id]["pending_body"] is None
    reliability_report(
        kind="down",
        orders=2000,
        valid=len(expected_1.valid),
        requests=summary["requests"],
        max_requests=(n + c - 1) * (MAX_RETRIES + 1),
        seconds=round(elapsed, 2),
        bound_seconds=round(bound, 2),
        allowance_seconds=LOCAL_WORK_ALLOWANCE,
        pending_after_failure=pending_after_failure,
        delivered=len(set(expected_1.valid) & set(stored)),
        lost=len(set(expected_1.valid) - set(stored)),
        sent_twice=sum(r.stored for r in requests) - len({r.order_id for r in requests}),
        outcome="run 1 (hour 1): failed (retryable), breaker; run 2 (hour 2): success, hour 1 delivered",
        runs=2,
        max_consecutive_transient=n,
        max_concurrency=c,
        max_retries=MAX_RETRIES,
        connect_timeout=CONNECT_TIMEOUT,
    )


@pytest.mark.parametrize("refusal", ["401", "invalid-auth-key-body"])
def test_refused_credentials_fail_the_dag_task_without_retries(
    refusal: str,
    sqlite_warehouse: Any,
    kapture_emulator: KaptureEmulator,
    monkeypatch: pytest.MonkeyPatch,
    run_dag_at: Any,
    reliability_report: Any,
) -> None:
    """The example DAG has ``retries=2``: a refused credential must still fail the task on its first try."""
    dag = load_example_dag()
    day = dt.datetime(2026, 11, 26)
    rows = list(generate_orders(300, day + dt.timedelta(hours=1), day + dt.timedelta(hours=2)))
    sqlite_warehouse.insert_orders(rows)
    if refusal == "401":
        kapture_emulator.configure(fault_rate=1.0, fault_kinds=["401"])
        conn = kapture_emulator.connection_json()
    else:  # a wrong password: the emulator answers 200 + {"status": "failed", "message": "Invalid Auth Key"}
        conn = kapture_conn_json(kapture_emulator.url, password="wrong-password")
    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", conn)
    assert dag.get_task(EXAMPLE_TASK_ID).retries == 2

    first = run_dag_at(dag, dt.datetime(2026, 11, 26, 2, tzinfo=dt.UTC))
    ti = next(t for t in first.dag_run.get_task_instances() if t.task_id == EXAMPLE_TASK_ID)
    requests = [r for r in kapture_emulator.requests if r.path == ADD_UPDATE_PATH]
    assert first.state == "failed" and str(ti.state) == "failed", first.task_states
    assert ti.try_number == 1, "Airflow retried a task that failed on refused credentials"
    assert 1 <= len(requests) <= 2 * 8 and len({r.order_id for r in requests}) == len(requests)  # no retry
    assert not kapture_emulator.orders

    kapture_emulator.configure(fault_rate=0.0)  # the credentials are fixed
    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", kapture_emulator.connection_json())
    second = run_dag_at(dag, dt.datetime(2026, 11, 26, 2, tzinfo=dt.UTC))
    assert second.state == "success", second.task_states
    assert set(kapture_emulator.orders) == {row[0] for row in rows}
    reliability_report(
        kind="auth-dag",
        fault=refusal,
        orders=len(rows),
        requests_before_failure=len(requests),
        try_number=ti.try_number,
        delivered=len(kapture_emulator.orders),
        lost=len({row[0] for row in rows} - set(kapture_emulator.orders)),
        outcome="run 1: task failed on try 1 of 3, no Airflow retry; run 2: success",
        runs=2,
    )


def test_refused_credentials_with_orders_still_queued_fail_the_task_cleanly(
    sqlite_warehouse: Any, kapture_emulator: KaptureEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders queued for sending when the credentials are refused are not sent, and that is not a bug.

    With ``max_concurrency`` 1 the next order is already queued while the first request waits for its 401:
    the task must fail with ``AirflowFailException`` naming the refusal (not a retryable "unexpected
    error"), and the queued order must never reach Kapture.
    """
    kapture_emulator.configure(latency=0.05)
    kapture_emulator.script("401")
    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", kapture_emulator.connection_json())
    day = dt.datetime(2026, 11, 26)
    sqlite_warehouse.insert_orders(list(generate_orders(50, day + dt.timedelta(hours=1), day + dt.timedelta(hours=2))))
    operator = SqlToKaptureOrdersOperator(task_id="queued", **{**operator_kwargs(HOUR_1), "max_concurrency": 1})
    with pytest.raises(AirflowFailException, match="refused the credentials"):
        operator.execute({"ti": FakeTaskInstance()})  # type: ignore[arg-type]
    requests = [r for r in kapture_emulator.requests if r.path == ADD_UPDATE_PATH]
    assert [r.status for r in requests] == [401]  # the queued orders were dropped, not sent
