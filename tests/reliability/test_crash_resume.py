"""Crash and resume: the real DAG task SIGKILLed at random points, and Kapture killed and restarted mid-run.

1. ``airflow dags test kapture_erp_order_sync 2026-11-26T02:00:00+00:00`` (the example DAG file, in a
   throw-away ``AIRFLOW_HOME``) is started as a subprocess five times, each killed with SIGKILL (whole
   process group) after a seeded random number of add-update requests seen by the emulator; each start
   resumes what the previous one left. A sixth run completes. After each kill the ledger may only lag
   behind Kapture by the requests in flight (at most ``max_concurrency``); at the end every valid order
   is in Kapture with the warehouse's values, the ledger lists it delivered with the hash of exactly the
   body Kapture holds, and the only orders Kapture received twice are ones in flight at a kill (at most
   ``max_concurrency`` per kill).
2. ``kapture-emulator --port P`` is SIGKILLed mid-run and restarted on the same port: the run fails
   (the circuit breaker stops it) or retries its way through; a re-run delivers everything. A restarted
   emulator starts empty, so delivery is checked on the union of what both lives stored.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from reliability_kit import (
    EXAMPLE_DAG_FILE,
    EXAMPLE_DAG_ID,
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
    subprocess_env,
)

from kapture_provider.compat import AirflowException
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.testing.warehouse import generate_orders
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

pytestmark = pytest.mark.system

LOGICAL_DATE = "2026-11-26T02:00:00+00:00"  # data interval [01:00, 02:00)
INTERVAL_START = dt.datetime(2026, 11, 26, 1)
INTERVAL = {"start": "2026-11-26 01:00:00", "end": "2026-11-26 02:00:00"}
MAX_CONCURRENCY = load_example_dag().get_task(EXAMPLE_TASK_ID).max_concurrency  # the example DAG's ceiling
SEEDS = (11, 22, 33, 44, 55)
ORDERS, INVALID = 1500, 3
KILL_AFTER = (1, 220)  # add-update requests seen by the emulator in one life, drawn per seed


@pytest.fixture
def cli_home(airflow_metadata_db: Path, tmp_path: Path) -> dict[str, str]:
    """A throw-away AIRFLOW_HOME holding the example DAG and a copy of the session's migrated metadata DB."""
    home = tmp_path / "airflow-home"
    (home / "dags").mkdir(parents=True)
    for dag_file in (EXAMPLE_DAG_FILE, EXAMPLE_DAG_FILE.with_name("kapture_erp_orders.py")):  # + what it imports
        shutil.copy(dag_file, home / "dags" / dag_file.name)
    source, target = sqlite3.connect(airflow_metadata_db), sqlite3.connect(home / "airflow.db")
    with contextlib.closing(source), contextlib.closing(target):
        source.backup(target)  # a consistent copy, not a file copy
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }


def start_dag_test(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    airflow = str(Path(sys.executable).with_name("airflow"))
    with log.open("wb") as out:
        return subprocess.Popen(
            [airflow, "dags", "test", EXAMPLE_DAG_ID, LOGICAL_DATE],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(**env),
            start_new_session=True,  # its own process group: SIGKILL reaches everything it started
        )


def add_updates(emulator: KaptureEmulator) -> list[Any]:
    return [r for r in emulator.requests if r.path == ADD_UPDATE_PATH]


def test_dag_task_sigkilled_at_random_points_resumes(
    cli_home: dict[str, str],
    sqlite_warehouse: Any,
    kapture_emulator: KaptureEmulator,
    tmp_path: Path,
    reliability_report: Any,
) -> None:
    emulator = kapture_emulator
    emulator.configure(latency=0.02)  # hundreds of orders/s: a life sends for a second or two
    env = {**cli_home, "AIRFLOW_CONN_KAPTURE_DEFAULT": emulator.connection_json()}
    rows = list(generate_orders(ORDERS, INTERVAL_START, INTERVAL_START + dt.timedelta(hours=1), invalid=INVALID))
    sqlite_warehouse.insert_orders(rows)
    db = sqlite_warehouse.path
    expected = expected_orders(db, load_example_dag().get_task(EXAMPLE_TASK_ID).sql, INTERVAL)
    assert len(expected.valid) == ORDERS - INVALID

    in_flight_at_kill: list[set[str]] = []
    started = time.monotonic()
    for life, seed in enumerate(SEEDS, start=1):
        kill_after = random.Random(seed).randint(*KILL_AFTER)
        seen_before = len(add_updates(emulator))
        log = tmp_path / f"life-{life}.log"
        process = start_dag_test(env, log)
        try:
            give_up = time.monotonic() + 400  # a safety net against a hang, not a timing assertion
            while len(add_updates(emulator)) - seen_before < kill_after:
                assert process.poll() is None, f"life {life} ended before the kill:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < give_up, f"life {life} sent too few requests:\n{log.read_text()[-3000:]}"
                time.sleep(0.005)
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert process.returncode == -signal.SIGKILL
        time.sleep(0.3)  # let answers already on the wire land in the emulator's store

        stored = emulator.orders
        ledger = ledger_rows(db)
        delivered = by_status(ledger, "delivered")
        assert delivered <= set(stored), "the ledger claims orders Kapture does not hold"
        unknown = set(stored) - delivered  # Kapture has them, the killed run never recorded it
        assert len(unknown) <= MAX_CONCURRENCY, f"life {life}: {len(unknown)} outcomes lost, more than in flight"
        for order_id in delivered:
            assert ledger[order_id]["body_hash"] == expected.valid[order_id].body_hash
        in_flight_at_kill.append(unknown)
        reliability_report(
            kind="crash",
            life=life,
            seed=seed,
            killed_after_requests=len(add_updates(emulator)) - seen_before,
            delivered_so_far=len(stored),
            unrecorded_at_kill=len(unknown),
        )

    final = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "dags", "test", EXAMPLE_DAG_ID, LOGICAL_DATE],
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    seconds = time.monotonic() - started

    stored = emulator.orders
    counts = emulator.update_counts
    resent = {order_id for order_id, count in counts.items() if count > 1}
    lost = set(expected.valid) - set(stored)
    reliability_report(
        kind="crash-final",
        kills=len(SEEDS),
        orders=ORDERS,
        valid=len(expected.valid),
        delivered=len(set(expected.valid) & set(stored)),
        lost=len(lost),
        sent_twice=len(resent),
        max_resend_allowed=MAX_CONCURRENCY * len(SEEDS),
        runs=len(SEEDS) + 1,
        seconds=round(seconds, 1),
    )
    assert not lost
    assert set(stored) == set(expected.valid)
    assert_store_matches(stored, expected, expected.valid)
    ledger = ledger_rows(db)
    for order_id, order in expected.valid.items():
        entry = ledger[order_id]
        assert (entry["status"], entry["body_hash"], entry["pending_body"]) == ("delivered", order.body_hash, None)
    assert {o for o, e in ledger.items() if e["status"] == "invalid"} == set(expected.invalid)
    for order_id, count in counts.items():  # each extra copy is one request in flight at one of the kills
        assert count - 1 <= sum(order_id in unknown for unknown in in_flight_at_kill), (order_id, count)
    # the task logs of all six lives hold neither the credentials nor the customers' phones and emails
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("life-*.log")) + final.stdout + final.stderr
    assert "Kapture sync summary" in logs
    token = base64.b64encode(b"kapture-user:kapture-password").decode()
    leaked = [n for n in ("kapture-password", token, *(r[2] for r in rows), *(r[3] for r in rows)) if n in logs]
    assert not leaked, leaked[:10]
    for unknown in in_flight_at_kill:
        assert len(resent & unknown) <= MAX_CONCURRENCY
    assert resent <= set().union(*in_flight_at_kill), "an order recorded as delivered was sent again"


# --------------------------------------------------------------------------------------------------
# Kapture itself killed mid-run and restarted on the same port
# --------------------------------------------------------------------------------------------------


def test_emulator_killed_and_restarted_mid_run(
    sqlite_warehouse: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reliability_report: Any
) -> None:
    example_task = load_example_dag().get_task(EXAMPLE_TASK_ID)
    emulator = EmulatorProcess(tmp_path, extra_args=["--latency", "0.005"])
    try:
        monkeypatch.setenv(
            "AIRFLOW_CONN_KAPTURE_DEFAULT",
            emulator.conn_json(**FAST_BACKOFF, max_retries=2, connect_timeout=1),
        )
        rows = list(generate_orders(2000, INTERVAL_START, INTERVAL_START + dt.timedelta(hours=1), invalid=INVALID))
        sqlite_warehouse.insert_orders(rows)
        db = sqlite_warehouse.path
        expected = expected_orders(db, example_task.sql, INTERVAL)
        kwargs = {
            "sql_conn_id": example_task.sql_conn_id,
            "sql": example_task.sql,
            "parameters": dict(INTERVAL),
            "version_column": example_task.version_column,
            "max_concurrency": example_task.max_concurrency,
            "max_failed_ratio": example_task.max_failed_ratio,
        }
        first_life: dict[str, Any] = {}
        killer_errors: list[BaseException] = []

        def kill_and_restart() -> None:
            try:
                while emulator.stats()["stored"] < 500:
                    time.sleep(0.01)
                # Every request from now on is answered by a connection reset, as by a dying server; what
                # the first life stored is read, then it is killed for real and started again, empty.
                emulator.configure(fault_rate=1.0, fault_kinds=["reset"])
                time.sleep(0.2)  # requests already past the fault draw finish storing
                first_life.update(emulator.orders())
                emulator.kill()
                time.sleep(1.0)  # nothing listens on the port for a second
                emulator.start()
            except BaseException as err:  # pragma: no cover - reported by the test below
                killer_errors.append(err)

        killer = threading.Thread(target=kill_and_restart)
        killer.start()
        started = time.monotonic()
        ti = FakeTaskInstance()
        try:
            SqlToKaptureOrdersOperator(task_id="emulator_restart_1", **kwargs).execute({"ti": ti})  # type: ignore[arg-type]
            first_outcome = "success"
        except AirflowException as err:
            first_outcome = f"failed ({'Kapture unavailable' if 'unavailable' in str(err) else str(err)[:60]})"
        killer.join(timeout=120)
        assert not killer_errors, killer_errors
        first_summary = ti.xcom.get("return_value")
        assert first_life, "the emulator was not killed during the run"
        if first_summary is not None:
            assert_accounting(first_summary)
        ledger = ledger_rows(db)
        assert by_status(ledger, "delivered") <= set(first_life) | set(emulator.orders())

        second = SqlToKaptureOrdersOperator(task_id="emulator_restart_2", **kwargs).execute({"ti": FakeTaskInstance()})  # type: ignore[arg-type]
        seconds = time.monotonic() - started
        assert_accounting(second)
        second_life = emulator.orders()
        union = {**first_life, **second_life}
        lost = set(expected.valid) - set(union)
        reliability_report(
            kind="emulator-restart",
            orders=2000,
            valid=len(expected.valid),
            stored_first_life=len(first_life),
            stored_second_life=len(second_life),
            delivered=len(set(expected.valid) & set(union)),
            lost=len(lost),
            sent_twice=len(set(first_life) & set(second_life)),
            outcome=f"run 1: {first_outcome}; run 2: success",
            runs=2,
            seconds=round(seconds, 1),
        )
        assert not lost
        assert set(union) == set(expected.valid)
        assert_store_matches(union, expected, expected.valid)
        ledger = ledger_rows(db)
        for order_id, order in expected.valid.items():
            assert (ledger[order_id]["status"], ledger[order_id]["body_hash"]) == ("delivered", order.body_hash)
        # Orders the first life stored but whose answer never arrived are the only ones sent to both lives.
        assert len(set(first_life) & set(second_life)) <= MAX_CONCURRENCY
    finally:
        emulator.stop()
