"""Time to record one result in the change ledger, per engine: ``python -m benchmarks.ledger_cost``.

For each engine the ledger supports — a SQLite file, PostgreSQL and MariaDB on 127.0.0.1 (the test
servers: ``postgres``/``test`` and ``root``/``test``), a DuckDB file — a fresh ledger table receives
``ORDERS`` results one at a time, as the sync's sending threads record them: from one thread (each
result waits for its own commit: ``max_concurrency=1``) and from eight at once (the default
``max_concurrency``: results that arrive during a commit share the next one). Wall time per result,
median and range of ``RUNS`` runs; SQLite from one thread, measured in the same invocation, is the
reference the others are divided by. Writes section 7 of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from benchmarks import report
from benchmarks.run import raise_priority

ORDERS, RUNS, THREADS = 1000, 5, 8
HEADING = "## 7. Ledger write cost per engine"
_NOW = "2026-11-27T10:00:00.000000Z"


def connections(folder: str) -> dict[str, dict[str, Any]]:
    return {
        "SQLite": {"conn_type": "sqlite", "host": f"{folder}/ledger.db"},
        "PostgreSQL": {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
                       "schema": "test"},
        "MariaDB": {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": "root", "schema": "test"},
        "DuckDB": {"conn_type": "duckdb", "host": f"{folder}/ledger.duckdb"},
    }  # fmt: skip


def one_run(hook: Any, threads: int, table: str) -> float:
    """Seconds per result for ``ORDERS`` results recorded by ``threads`` threads into a fresh ``table``."""
    from kapture_provider.sync.ledger import DELIVERED, Ledger, Outcome

    ledger = Ledger(hook, table)
    cur = ledger.conn.cursor()
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    cur.close()
    ledger.conn.commit()
    ledger.create()

    def record(first: int) -> None:
        for n in range(first, ORDERS, threads):
            ledger.record([Outcome(f"{23_500_000 + n:08d}", DELIVERED, "h" * 64, f"n:{n}")], _NOW)

    workers = [threading.Thread(target=record, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    cur = ledger.conn.cursor()
    cur.execute(f"SELECT COUNT(*) FROM {table}")
    assert cur.fetchone()[0] == ORDERS, "not every result was recorded"
    cur.execute(f"DROP TABLE {table}")
    cur.close()
    ledger.conn.commit()
    ledger.close()
    return elapsed / ORDERS


def main() -> int:
    niceness = raise_priority()
    load_before = report.load_average()
    folder = tempfile.mkdtemp(prefix="kapture-ledger-cost-")
    for name, conn in connections(folder).items():
        os.environ[f"AIRFLOW_CONN_BENCH_LEDGER_{name.upper()}"] = json.dumps(conn)
    from kapture_provider.compat import BaseHook

    results: dict[str, dict[int, list[float]]] = {}
    for name in connections(folder):
        hook = BaseHook.get_connection(f"bench_ledger_{name.lower()}").get_hook()
        results[name] = {}
        for threads in (1, THREADS):
            results[name][threads] = [one_run(hook, threads, "kapture_ledger_cost") for _ in range(RUNS)]
            median = statistics.median(results[name][threads])
            print(f"{name}, {threads} thread(s): {median * 1e6:.0f} µs per result", flush=True)
    reference = statistics.median(results["SQLite"][1])
    section = [
        "",
        HEADING,
        "",
        f"`python -m benchmarks.ledger_cost` on {report.machine_info()['date']} (niceness {niceness}; load "
        f"average before {load_before}, after {report.load_average()}): {ORDERS:,} results recorded one at a "
        f"time into a fresh ledger table, from 1 thread (each waits for its commit) and from {THREADS} threads "
        f"(the default `max_concurrency`: results arriving during a commit share the next); wall time per "
        f"result, median (min–max) of {RUNS} runs. PostgreSQL and MariaDB are the local test servers "
        "(PostgreSQL session with `synchronous_commit` off; MariaDB as configured, "
        "`innodb_flush_log_at_trx_commit=1`); SQLite and DuckDB files on the local disk.",
        "",
        "| ledger | 1 thread, µs/result | ÷ SQLite | 8 threads, µs/result | ÷ SQLite (1 thread) |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        one, eight = (sorted(x * 1e6 for x in runs[t]) for t in (1, THREADS))
        section.append(
            f"| {name} | {statistics.median(one):.0f} ({one[0]:.0f}–{one[-1]:.0f}) | "
            f"{statistics.median(one) / reference / 1e6:.1f}× | {statistics.median(eight):.0f} "
            f"({eight[0]:.0f}–{eight[-1]:.0f}) | {statistics.median(eight) / reference / 1e6:.1f}× |"
        )
    report.replace_section(HEADING, section)
    print(f"Wrote {report.RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
