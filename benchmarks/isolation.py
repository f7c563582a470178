"""Run each measured task in a fresh process, without paying Airflow's import time for each one.

A multiprocessing *forkserver* imports Airflow, the provider and the variants once; every task is a
new process forked from it. Its CPU time and peak RSS are its own (the forkserver is a fresh
interpreter, so nothing of the orchestrating process is inherited), and the imported modules count
in its RSS exactly as they would in an Airflow worker. The child's output goes to a log file.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.fixtures import WORK

LOGS = WORK / "logs"
_context = multiprocessing.get_context("forkserver")


def prepare_environment() -> None:
    """A throw-away Airflow home (set before the forkserver starts: it inherits this environment)."""
    home = WORK / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
    )
    _context.set_forkserver_preload(["benchmarks.variants"])


def run_isolated(task: Any, log_name: str) -> dict[str, Any]:
    """``variants.measure(task)`` in a new process; raises if the task failed there."""
    LOGS.mkdir(parents=True, exist_ok=True)
    receiver, sender = _context.Pipe(duplex=False)
    process = _context.Process(target=_child, args=(task, sender, str(LOGS / f"{log_name}.log")))
    process.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = ("error", f"the child process died (exit code {process.exitcode}); see {LOGS / log_name}.log")
    process.join()
    status, value = outcome
    if status != "ok":
        raise RuntimeError(f"benchmark task {log_name} failed:\n{value}")
    return value  # type: ignore[no-any-return]


def _child(task: Any, sender: Connection, log_path: str) -> None:
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        from benchmarks.variants import measure

        sender.send(("ok", measure(task)))
    except BaseException:
        sender.send(("error", traceback.format_exc()))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sender.close()


def log_path(log_name: str) -> Path:
    return LOGS / f"{log_name}.log"
