"""Fault matrix: 2,000 orders from a SQLite warehouse through SqlToKaptureOrdersOperator, per fault and rate.

Every case uses the example DAG's query, version column, concurrency (8) and failure tolerance (1%),
over one hourly interval holding 2,000 orders (3 of them invalid: no customer name). Kapture is the
``kapture-emulator`` in a subprocess answering a share of the add-update requests (1%, 10%, 30%) with
one fault. The connection uses the default classification and ``max_retries=2`` (3 attempts per order
per run) with small backoffs (0.01 s … 0.05 s). ``Retry-After`` is 1 s for 429 at 1% (honoured: checked
per order) and 0 elsewhere: a 1 s pause of every worker per fault would take minutes at 10% or 30%.
The rate is fixed at 2,000 requests/s so that the adaptive controller does not take random 429s for a
real rate limit.

* transient faults (500, 502 HTML, 503 + Retry-After, 429 ± Retry-After, reset, slow, truncated JSON,
  200 + non-JSON): the interval is run again, fault still on, until nothing is left failed; afterwards
  Kapture holds exactly the warehouse's body of every valid order;
* permanent faults (200 + failed body, 404): after the first run the ledger lists every refused order
  with Kapture's reason and its pending body; a run after the fault is gone delivers them;
* 401 / 403: the task fails at once with ``AirflowFailException`` (no Airflow retries), with no retry of
  the refused request; a run after the fault is gone delivers everything.

After every run: each row read is counted exactly once (succeeded + failed + unchanged + stale +
invalid + duplicates = rows read + earlier failures retried), the ledger never claims an order Kapture
does not hold, and the task outcome follows ``max_failed_ratio``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from reliability_kit import (
    EXAMPLE_TASK_ID,
    FAST_BACKOFF,
    EmulatorProcess,
    FakeTaskInstance,
    assert_accounting,
    assert_store_matches,
    by_status,
    expected_orders,
    ledger_rows,
    load_example_dag,
    stores_per_order,
)

from kapture_provider.compat import AirflowException, AirflowFailException
from kapture_provider.testing.warehouse import generate_orders
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

pytestmark = pytest.mark.system

ORDERS, INVALID = 2000, 3
INTERVAL_START = dt.datetime(2026, 11, 26, 1)
INTERVAL = {"start": "2026-11-26 01:00:00", "end": "2026-11-26 02:00:00"}  # the DAG's rendered parameters
MAX_RETRIES = 2
ATTEMPTS = MAX_RETRIES + 1
MAX_RUNS = 6
SLOW_TIMEOUT, SLOW_SECONDS = 0.2, 0.3  # read timeout of the connection; how long a "slow" answer takes
FIXED_RATE = 2000

TRANSIENT = ("500", "502", "503", "429", "429-bare", "reset", "slow", "truncated", "non-json")
PERMANENT = {"failed-body": "Order Updation Failed", "404": "Not Found"}
AUTH = ("401", "403")
RETRY_AFTER_FAULTS = ("503", "429")  # the faults that carry a Retry-After header
RETRY_AFTER_ONE_SECOND = ("429", 0.01)
RATES = (0.01, 0.10, 0.30)


@dataclass
class Run:
    number: int
    outcome: str  # success | failed | failed-no-retry
    summary: dict[str, Any] | None
    error: str | None
    seconds: float
    records: list[dict[str, Any]]  # the emulator's records of this run's requests


@pytest.fixture(scope="module")
def example_task() -> Any:
    return load_example_dag().get_task(EXAMPLE_TASK_ID)


def operator_kwargs(example_task: Any) -> dict[str, Any]:
    """The example DAG's task settings, its interval parameters rendered, and a fixed rate."""
    return {
        "sql_conn_id": example_task.sql_conn_id,
        "sql": example_task.sql,
        "parameters": dict(INTERVAL),
        "version_column": example_task.version_column,
        "max_concurrency": example_task.max_concurrency,
        "max_failed_ratio": example_task.max_failed_ratio,
        "max_requests_per_second": FIXED_RATE,
    }


def run_once(number: int, kwargs: dict[str, Any], emulator: EmulatorProcess, since: int) -> Run:
    ti = FakeTaskInstance()
    operator = SqlToKaptureOrdersOperator(task_id=f"fault_matrix_run_{number}", **kwargs)
    started = time.monotonic()
    outcome, error, summary = "success", None, None
    try:
        summary = operator.execute({"ti": ti})  # type: ignore[arg-type]
    except AirflowFailException as err:
        outcome, error = "failed-no-retry", str(err)
    except AirflowException as err:
        outcome, error, summary = "failed", str(err), ti.xcom.get("return_value")
    seconds = time.monotonic() - started
    return Run(number, outcome, summary, error, seconds, emulator.requests(since))


def check_run(run: Run, ledger_before: dict[str, Any], ledger: dict[str, Any], stored: dict[str, Any]) -> None:
    """What must hold after any run, whatever the fault."""
    assert by_status(ledger, "delivered") <= set(stored), "the ledger claims orders Kapture does not hold"
    if run.summary is None:
        return
    summary = run.summary
    assert_accounting(summary)
    newly_delivered = by_status(ledger, "delivered") - by_status(ledger_before, "delivered")
    assert len(newly_delivered) == summary["succeeded"], "an order counted as succeeded twice, or not at all"
    assert by_status(ledger, "failed") == {o["order_id"] for o in summary["failed_orders"]}
    expected_outcome = "failed" if summary["failure_ratio"] > 0.01 else "success"
    assert run.outcome == expected_outcome, (run.outcome, summary["failure_ratio"], run.error)


def outcome_text(runs: list[Run]) -> str:
    words = {"success": "success", "failed": "failed (retryable)", "failed-no-retry": "failed at once, no retry"}
    return "; ".join(f"run {r.number}: {words[r.outcome]}" for r in runs)


@pytest.mark.parametrize("rate", RATES, ids=lambda r: f"{r:.0%}")
@pytest.mark.parametrize("fault", [*TRANSIENT, *PERMANENT, *AUTH])
def test_fault_matrix(
    fault: str,
    rate: float,
    emulator_process: EmulatorProcess,
    sqlite_warehouse: Any,
    example_task: Any,
    monkeypatch: pytest.MonkeyPatch,
    reliability_report: Any,
) -> None:
    emulator = emulator_process
    emulator.reset()
    retry_after = 1 if (fault, rate) == RETRY_AFTER_ONE_SECOND else 0
    seed = zlib.crc32(f"{fault}@{rate}".encode())
    emulator.configure(
        fault_rate=rate, fault_kinds=[fault], seed=seed, retry_after=retry_after, slow_seconds=SLOW_SECONDS, latency=0
    )
    extras: dict[str, Any] = {**FAST_BACKOFF, "max_retries": MAX_RETRIES}
    if fault == "slow":
        extras["timeout"] = SLOW_TIMEOUT
    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", emulator.conn_json(**extras))
    rows = list(generate_orders(ORDERS, INTERVAL_START, INTERVAL_START + dt.timedelta(hours=1), invalid=INVALID))
    sqlite_warehouse.insert_orders(rows)
    db = sqlite_warehouse.path
    expected = expected_orders(db, example_task.sql, INTERVAL)
    assert (len(expected.valid), len(expected.invalid)) == (ORDERS - INVALID, INVALID)
    kwargs = operator_kwargs(example_task)

    runs: list[Run] = []
    all_records: list[dict[str, Any]] = []
    ledger: dict[str, Any] = {}
    refused: dict[str, str] = {}
    after_refusal: int | None = None
    started = time.monotonic()
    for number in range(1, MAX_RUNS + 1):
        if number == 2 and fault not in TRANSIENT:
            emulator.configure(fault_rate=0.0)  # permanent and auth faults: the next run comes after the fix
        run = run_once(number, kwargs, emulator, since=all_records[-1]["seq"] if all_records else 0)
        runs.append(run)
        all_records += run.records
        ledger_before, ledger = ledger, ledger_rows(db)
        stored = emulator.orders()
        check_run(run, ledger_before, ledger, stored)
        faulted = Counter(r["order_id"] for r in run.records if r["fault"])

        if fault in TRANSIENT and run.summary is not None:
            failed_ids = {o["order_id"] for o in run.summary["failed_orders"]}
            for order_id in failed_ids:  # failed only after every attempt of this run met the fault
                # (slow: a loaded machine may also time out an answer the emulator sent in time)
                assert faulted[order_id] == ATTEMPTS or fault == "slow", (order_id, faulted[order_id])
                assert (
                    ledger[order_id]["pending_body"]
                    and f"gave up after {ATTEMPTS} attempts" in (ledger[order_id]["last_error"])
                )
            if fault != "slow":  # a timed-out "slow" answer was stored by Kapture all the same
                assert set(stored) == by_status(ledger, "delivered")
        if fault in PERMANENT and number == 1:
            assert run.summary is not None
            refused = {r["order_id"]: PERMANENT[fault] for r in run.records if r["fault"] == fault}
            assert refused, "no fault was injected"
            assert by_status(ledger, "failed") == set(refused)  # refused orders are never retried in the run
            for order_id, message in refused.items():
                entry = ledger[order_id]
                assert message in entry["last_error"] and order_id in entry["last_error"], entry["last_error"]
                assert entry["pending_body"] is not None and order_id not in stored
            assert set(expected.valid) - set(stored) == set(refused), "an order neither delivered nor listed"
        if fault in AUTH and number == 1:
            assert run.outcome == "failed-no-retry", run.error
            assert "refused the credentials" in (run.error or "")
            seqs = [r["seq"] for r in run.records]
            first_refusal = min(r["seq"] for r in run.records if r["fault"] == fault)
            after_refusal = sum(seq > first_refusal for seq in seqs)  # in flight, or sent before it was seen
            assert len(seqs) < ORDERS / 2, "the run did not stop when the credentials were refused"
            for order_id in (r["order_id"] for r in run.records if r["fault"] == fault):
                assert Counter(r["order_id"] for r in run.records)[order_id] == 1, "a refused credential was retried"
                assert ledger[order_id]["status"] == "failed" and ledger[order_id]["pending_body"] is not None
        if fault == "slow":  # stored by Kapture, answer too late: the retry stores the same body again
            assert any(r["fault"] == "slow" and r["stored"] for r in run.records) or run.number > 1
        if fault in RETRY_AFTER_FAULTS and retry_after:
            by_order: dict[str, list[dict[str, Any]]] = {}
            for record in run.records:
                by_order.setdefault(record["order_id"], []).append(record)
            for attempts in by_order.values():
                for answer, retry in itertools.pairwise(attempts):
                    if answer["fault"] == fault:  # the client waited Retry-After before asking again
                        assert retry["received_at"] - answer["received_at"] >= retry_after, (answer, retry)
        if set(expected.valid) <= set(stored) and by_status(ledger, "delivered") == set(expected.valid):
            break
    seconds = time.monotonic() - started

    stored = emulator.orders()
    stores = stores_per_order(all_records)
    lost = set(expected.valid) - set(stored)
    sent_twice = sum(count > 1 for count in stores.values())
    reliability_report(
        kind="fault",
        fault=fault,
        rate=rate,
        orders=ORDERS,
        valid=len(expected.valid),
        delivered=len(set(expected.valid) & set(stored)),
        lost=len(lost),
        sent_twice=sent_twice,
        refused_first_run=len(refused),
        failed_first_run=runs[0].summary["failed"] if runs[0].summary else None,
        requests=len(all_records),
        faults_injected=sum(1 for r in all_records if r["fault"]),
        outcome=outcome_text(runs),
        runs=len(runs),
        seconds=round(seconds, 1),
        retry_after=retry_after if fault in RETRY_AFTER_FAULTS else None,
        requests_after_refusal=after_refusal,
    )

    assert not lost, f"{len(lost)} valid orders never reached Kapture"
    assert set(stored) == set(expected.valid), "Kapture holds an order the warehouse did not select as valid"
    assert_store_matches(stored, expected, expected.valid)
    ledger = ledger_rows(db)
    for order_id, order in expected.valid.items():
        entry = ledger[order_id]
        assert (entry["status"], entry["body_hash"], entry["pending_body"]) == ("delivered", order.body_hash, None)
    for order_id, reason in expected.invalid.items():
        assert ledger[order_id]["status"] == "invalid"
        assert "customer_info.customer_name" in reason
        assert "customer_info.customer_name" in ledger[order_id]["last_error"]
    if fault != "slow":  # (with the read timeout of 0.2 s, a loaded machine may time out a normal answer too)
        assert sent_twice == 0, "an order was stored twice although every earlier answer was seen"
    if fault in TRANSIENT:
        assert runs[-1].outcome == "success"
    else:
        assert len(runs) == 2 and runs[1].outcome == "success", outcome_text(runs)
