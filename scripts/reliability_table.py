"""Run the reliability and security campaign and write ``docs/reliability.md`` from what it measured.

    .venv/bin/python scripts/reliability_table.py            # runs pytest tests/reliability, writes the doc
    .venv/bin/python scripts/reliability_table.py -- -k fault  # extra pytest arguments after --

The tests append one JSON line per measured case to the file named by ``KAPTURE_RELIABILITY_OUT``
(see ``tests/reliability/conftest.py``); pytest's JUnit report gives each test's outcome. Nothing in
the document is typed by hand: it is rendered from those two files, the code's own defaults (the
"Kapture down" bound) and the machine and commit it ran on. Exits with pytest's status.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "reliability"
REPORT_PATH = "docs/reliability.md"
DEFAULT_OUT = REPO / REPORT_PATH

FAULTS = {
    "500": "500 (JSON error body)",
    "502": "502 (HTML page)",
    "503": "503 + `Retry-After: 0`",
    "429": "429 + `Retry-After` (1 s at 1%, else 0)",
    "429-bare": "429 without `Retry-After`",
    "reset": "connection reset",
    "slow": "slow (answer after the read timeout)",
    "truncated": "200 + truncated JSON",
    "non-json": "200 + HTML (not JSON)",
    "failed-body": '200 + `"status": "failed"` (refused)',
    "404": "404 (refused)",
    "401": "401 (credentials refused)",
    "403": "403 (credentials refused)",
}
PERMANENT = ("failed-body", "404")


def run_pytest(rows_file: Path, junit: Path, extra: list[str]) -> tuple[int, float]:
    env = {**os.environ, "KAPTURE_RELIABILITY_OUT": str(rows_file)}
    command = [sys.executable, "-m", "pytest", str(TESTS.relative_to(REPO)), "-p", "no:cacheprovider", "-q"]
    command += ["-W", "ignore", f"--junitxml={junit}", *extra]
    print("$", " ".join(command), flush=True)
    started = time.monotonic()
    status = subprocess.call(command, cwd=REPO, env=env)
    return status, time.monotonic() - started


def read_junit(junit: Path) -> dict[str, dict[str, Any]]:
    """nodeid -> {"outcome", "seconds"} from pytest's JUnit XML."""
    results: dict[str, dict[str, Any]] = {}
    if not junit.exists():
        return results
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        nodeid = f"{module}.py::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "FAILED" if child.tag == "failure" else "ERROR"
            elif child.tag == "skipped":
                outcome = "skipped"
        results[nodeid] = {"outcome": outcome, "seconds": float(case.get("time") or 0)}
    return results


def read_rows(rows_file: Path) -> list[dict[str, Any]]:
    if not rows_file.exists():
        return []
    return [json.loads(line) for line in rows_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def git(*args: str) -> str:
    try:
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{platform.node()} — {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average at the end {load}"
    )


def outcome_of(row: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    result = results.get(row.get("test", ""))
    return result["outcome"] if result else "not run"


def fault_outcome(row: dict[str, Any]) -> str:
    after = row.get("requests_after_refusal")
    if after is None:
        return str(row["outcome"])
    sent = f"{after} request{'' if after == 1 else 's'} already sent reached Kapture after the refusal"
    return str(row["outcome"]).replace("no retry", f"no retry ({sent})", 1)


def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def down_bound_section(rows: list[dict[str, Any]]) -> list[str]:
    """The "Kapture down" bound, as ``test_default_bound_is_documented`` computed it from the code's defaults."""
    if not rows:
        return ['## The "Kapture down" bound', "", "(not measured: the test did not run)", ""]
    b = rows[-1]
    n, c, r = b["max_consecutive_transient"], b["max_concurrency"], b["max_retries"]
    backoff, connect, read = b["backoff_sum"], b["connect_timeout"], b["timeout"]
    return [
        '## The "Kapture down" bound',
        "",
        f"`OrderSync` stops sending once N = `max_consecutive_transient` = {n} orders in a row have exhausted their "
        f"retries on transient failures; with C = `max_concurrency` = {c} requests in flight, at most N + C − 1 = "
        f"{n + c - 1} orders are ever attempted, each at most R + 1 = {r + 1} times (R = `max_retries`). Every other "
        "row is read, validated and recorded as `failed` with its `pending_body`, and the task fails (retryable); "
        "the next run of any interval delivers them once Kapture answers. The task therefore fails within",
        "",
        "    (⌈(N + C − 1) / C⌉ + 1) × T_order  +  the local time to read, validate and record the rows",
        "    T_order = (R + 1) × t_attempt + Σ_{a<R} min(backoff_max, backoff_base × 2^a)",
        "",
        f"(list scheduling of N + C − 1 orders of at most T_order each on C workers). With the defaults (N = {n}, "
        f"C = {c}, R = {r}, backoff {b['backoff_base']:g} … {b['backoff_max']:g} s → Σ backoff = {backoff:g} s, "
        f"connect timeout {connect:g} s, read timeout {read:g} s) that is {b['waves']} × T_order:",
        "",
        *table(
            ["Kapture is …", "t_attempt", "T_order (s)", "bound (s)"],
            [
                ["not listening (connection refused)", "≈ 0", backoff, b["bound_refused"]],
                [
                    "dropping packets (every connect times out)",
                    connect,
                    (r + 1) * connect + backoff,
                    b["bound_dropped"],
                ],
                [
                    "accepting but never answering (every read times out)",
                    connect + read,
                    (r + 1) * (connect + read) + backoff,
                    b["bound_hung"],
                ],
            ],
        ),
        "",
        f"A Kapture that answers 503/429 with `Retry-After` instead pauses every worker for up to "
        f"{b['max_retry_after']:g} s per retry, which adds up to R × that per wave. `test_kapture_down.py` runs "
        "with R = 2, backoff 0.01 … 0.05 s and connect timeout 1 s, and asserts that the measured time is below "
        "the bound computed the same way (plus an allowance for the local work) and that at most "
        "(N + C − 1) × (R + 1) requests were made; see the table above.",
        "",
    ]


def commit_under_test() -> str:
    """HEAD, and whether the tree differs from it (this report itself aside), taken before the run."""
    changed = [line for line in git("status", "--porcelain").splitlines() if not line.endswith(REPORT_PATH)]
    return f"`{git('rev-parse', 'HEAD') or 'unknown'}`" + (" (with uncommitted changes)" if changed else "")


def render(
    rows: list[dict[str, Any]], results: dict[str, dict[str, Any]], status: int, seconds: float, commit: str
) -> str:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    counts: dict[str, int] = defaultdict(int)
    for result in results.values():
        counts[result["outcome"]] += 1
    lines = [
        "# Reliability and security test results",
        "",
        "<!-- Generated by scripts/reliability_table.py from a run of tests/reliability. Do not edit by hand. -->",
        "",
        f"* Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"* Machine: {machine()}",
        f"* Commit: {commit}",
        f"* Result: {', '.join(f'{n} {k}' for k, n in sorted(counts.items())) or 'no tests ran'} "
        f"(pytest exit status {status}) in {seconds / 60:.1f} min",
        "",
        "Regenerate with `.venv/bin/python scripts/reliability_table.py`. The tests and what they check are "
        "described in their module docstrings under `tests/reliability/`.",
        "",
        "## Fault matrix",
        "",
        "2,000 orders (3 of them invalid) of one hourly interval, from a SQLite warehouse through "
        "`SqlToKaptureOrdersOperator` with the example DAG's query, `max_concurrency` 8 and `max_failed_ratio` 1%; "
        "Kapture is the `kapture-emulator` (a subprocess) answering that share of the add-update requests with the "
        "fault. Connection: `max_retries` 2, backoff 0.01 … 0.05 s (read timeout 0.2 s for *slow*, whose answers "
        "come after 0.3 s); a fixed 2,000 requests/s so that random 429s do not slow the adaptive controller. "
        "Transient faults stay on and the interval is run again until nothing is left failed; permanent and "
        "credential faults are removed before the second run. *Delivered* counts valid orders Kapture holds with "
        "exactly the warehouse's body; *lost* = valid orders neither delivered nor listed as refused; *sent twice* "
        "= orders Kapture stored more than once (only *slow* may: Kapture stored the order, the answer came after "
        "the client gave up). After every run each row is counted exactly once (succeeded + failed + unchanged + "
        "stale + invalid + duplicates = rows read + earlier failures retried).",
        "",
    ]
    fault_rows = sorted(
        by_kind["fault"], key=lambda r: (list(FAULTS).index(r["fault"]) if r["fault"] in FAULTS else 99, r["rate"])
    )
    lines += table(
        [
            "fault",
            "rate",
            "orders",
            "delivered",
            "lost",
            "sent twice",
            "refused in run 1",
            "failed in run 1",
            "requests",
            "task outcome",
            "runs",
            "time (s)",
            "test",
        ],
        [
            [
                FAULTS.get(r["fault"], r["fault"]),
                f"{r['rate']:.0%}",
                r["orders"],
                f"{r['delivered']}/{r['valid']}",
                r["lost"],
                r["sent_twice"],
                r["refused_first_run"] if r["fault"] in PERMANENT else None,
                r["failed_first_run"],
                r["requests"],
                fault_outcome(r),
                r["runs"],
                r["seconds"],
                outcome_of(r, results),
            ]
            for r in fault_rows
        ],
    )
    total = sum(r["seconds"] for r in fault_rows)
    lines += ["", f"Fault matrix: {len(fault_rows)} cases, {total / 60:.1f} min of sync runs.", ""]

    lines += ["## Kapture down, refused credentials", ""]
    lines += table(
        [
            "case",
            "orders",
            "requests",
            "time (s)",
            "bound (s)",
            "rows left pending",
            "delivered after recovery",
            "lost",
            "task outcome",
            "test",
        ],
        [
            [
                f"nothing listening on the port (N = {r['max_consecutive_transient']}, C = {r['max_concurrency']}, "
                f"R = {r['max_retries']}, connect timeout {r['connect_timeout']} s)",
                r["orders"],
                f"{r['requests']} (≤ {r['max_requests']})",
                r["seconds"],
                f"{r['bound_seconds']} + {r['allowance_seconds']:g} local",
                r["pending_after_failure"],
                f"{r['delivered']}/{r['valid']}",
                r["lost"],
                r["outcome"],
                outcome_of(r, results),
            ]
            for r in by_kind["down"]
        ]
        + [
            [
                f"{r['fault']} through the example DAG (`retries=2`), `dag.test`",
                r["orders"],
                f"{r['requests_before_failure']} before failing",
                None,
                None,
                None,
                r["delivered"],
                r["lost"],
                r["outcome"],
                outcome_of(r, results),
            ]
            for r in by_kind["auth-dag"]
        ],
    )
    lines += [""]
    lines += down_bound_section(by_kind["down-bound"])

    lines += [
        "## Crash and resume",
        "",
        "`airflow dags test kapture_erp_order_sync 2026-11-26T02:00:00+00:00` (the example DAG file, a throw-away "
        "AIRFLOW_HOME) SIGKILLed (whole process group) after a seeded random number of add-update requests seen by "
        "the emulator, five times in a row, each start resuming what the previous left; a sixth run completes. "
        "*Unrecorded at the kill* = orders Kapture holds that the ledger does not list as delivered (their answers "
        "were in flight): at most `max_concurrency` = 8, and the only orders sent twice.",
        "",
    ]
    lines += table(
        ["life", "seed", "killed after requests", "delivered so far", "unrecorded at the kill", "test"],
        [
            [
                r["life"],
                r["seed"],
                r["killed_after_requests"],
                r["delivered_so_far"],
                r["unrecorded_at_kill"],
                outcome_of(r, results),
            ]
            for r in sorted(by_kind["crash"], key=lambda r: r["life"])
        ],
    )
    lines += [""]
    lines += table(
        ["after", "orders", "delivered", "lost", "sent twice (allowed)", "runs", "time (s)", "test"],
        [
            [
                f"{r['kills']} kills + 1 complete run",
                r["orders"],
                f"{r['delivered']}/{r['valid']}",
                r["lost"],
                f"{r['sent_twice']} (≤ {r['max_resend_allowed']})",
                r["runs"],
                r["seconds"],
                outcome_of(r, results),
            ]
            for r in by_kind["crash-final"]
        ],
    )
    lines += [
        "",
        "Kapture itself SIGKILLed mid-run (`kapture-emulator --port P`, after 500 stored orders; for its last "
        "0.2 s it resets every connection so that what it stored can be read) and restarted empty on the same "
        "port a second later; delivery is checked on the union of both lives' stores:",
        "",
    ]
    lines += table(
        [
            "orders",
            "stored by life 1",
            "stored by life 2",
            "delivered (union)",
            "lost",
            "sent to both lives",
            "task outcome",
            "time (s)",
            "test",
        ],
        [
            [
                r["orders"],
                r["stored_first_life"],
                r["stored_second_life"],
                f"{r['delivered']}/{r['valid']}",
                r["lost"],
                r["sent_twice"],
                r["outcome"],
                r["seconds"],
                outcome_of(r, results),
            ]
            for r in by_kind["emulator-restart"]
        ],
    )
    redirects = by_kind["redirect"]
    if redirects:
        reached = sum(r["requests_to_target"] for r in redirects)
        lines += [
            "",
            "## Redirects",
            "",
            f"{len(redirects)} redirect cases (301/302/303/307/308 to 127.0.0.2 or `localhost` on another port): "
            f"requests that reached the redirect target: {reached}.",
        ]
    lines += ["", "## Every test", ""]
    lines += table(
        ["test", "outcome", "time (s)"],
        [
            [nodeid.removeprefix("tests/reliability/"), r["outcome"], round(r["seconds"], 1)]
            for nodeid, r in sorted(results.items())
        ],
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown file to write")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    commit = commit_under_test()
    with tempfile.TemporaryDirectory(prefix="kapture-reliability-") as work:
        rows_file, junit = Path(work) / "rows.jsonl", Path(work) / "junit.xml"
        status, seconds = run_pytest(rows_file, junit, args.pytest_args)
        rows, results = read_rows(rows_file), read_junit(junit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, results, status, seconds, commit), encoding="utf-8")
    print(f"wrote {args.out} ({len(rows)} measured rows, {len(results)} tests)")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
