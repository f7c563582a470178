"""The compatibility matrix: the provider's tests on every Airflow it supports.

    python compat/matrix.py lock  [SERIES ...]   # recompile compat/locks/airflow-SERIES.txt (needs PyPI)
    python compat/matrix.py run   [SERIES ...]   # a fresh venv per series from its lock, the tests, a result file
    python compat/matrix.py table                # docs/supported-versions.md's table, from compat/results/

SERIES is an Airflow minor line (``2.11``, ``3.0``, …); none given means all of :data:`SERIES`. A lock stands
in for Airflow's constraint files: everything as of the day after the release, except the providers (as of
:data:`PROVIDERS_AS_OF`, as users install them). A run installs the lock and the provider's wheel, and runs
:data:`TEST_PATHS` with that venv's pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "compat" / "locks"
RESULTS = REPO / "compat" / "results"
VENVS = REPO / ".compat"
VERSIONS_PAGE = REPO / "docs" / "supported-versions.md"
PYTHON_VERSION = "3.11"


@dataclass(frozen=True)
class Series:
    """One supported Airflow line: its newest release and the day after it came out (the cap)."""

    airflow: str
    cutoff: str  # --exclude-newer for everything but the providers


SERIES: dict[str, Series] = {
    "2.11": Series("2.11.2", "2026-03-15"),  # released 2026-03-14
    "3.0": Series("3.0.6", "2025-08-30"),  # released 2025-08-29
    "3.1": Series("3.1.8", "2026-03-12"),  # released 2026-03-11
    "3.2": Series("3.2.2", "2026-05-30"),  # released 2026-05-29
    "3.3": Series("3.3.2", "2026-09-18"),  # released 2026-09-17
}
#: Providers may be as new as this (official providers of Oct 2026 support Airflow 2.11 and later).
PROVIDERS_AS_OF = "2026-12-01"
#: Every provider any supported Airflow or this package pulls in (uv needs the exact names).
PROVIDERS = (
    "common-compat", "common-io", "common-sql", "duckdb", "fab", "ftp", "http", "imap", "mysql", "oracle",
    "postgres", "smtp", "sqlite", "standard",
)  # fmt: skip
#: Libraries whose floor is a security fix newer than some series' cap: allowed as new as the providers.
SECURITY_FLOORS = ("urllib3",)
#: The matrix subset: hook, operators, payload, sync engine and ledger, DAGs (``dag.test()`` and the
#: ``airflow dags test`` CLI), the connection form, the emulator. The whole suite runs on the newest
#: Airflow in ``make test``.
TEST_PATHS = (
    "tests/hooks", "tests/operators", "tests/test_payload.py", "tests/sync", "tests/test_provider_info.py",
    "tests/test_example_dags.py", "tests/test_dags_cli.py", "tests/testing",
)  # fmt: skip
#: Left to the newest Airflow: the warehouse x ledger acceptance suite through ``airflow dags test`` (each
#: combination starts Airflow's CLI several times). ``tests/test_dags_cli.py`` runs that CLI on every series.
NEWEST_ONLY = ("tests/sync/test_acceptance_cli.py",)


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise SystemExit("uv not found: run `make .venv/.installed` first")
    return found


def lock_path(series: str) -> Path:
    return LOCKS / f"airflow-{series}.txt"


def lock(series: str) -> None:
    """Compile the capped lock file of one series."""
    spec = SERIES[series]
    providers = [f"--exclude-newer-package=apache-airflow-providers-{p}={PROVIDERS_AS_OF}" for p in PROVIDERS]
    providers += [f"--exclude-newer-package={name}={PROVIDERS_AS_OF}" for name in SECURITY_FLOORS]
    subprocess.run(
        [uv(), "pip", "compile", "--quiet", "--python-version", PYTHON_VERSION, "--exclude-newer", spec.cutoff,
         *providers, "--extra", "test", "--no-emit-package", "airflow-provider-kapture",
         "--custom-compile-command", f"python compat/matrix.py lock {series}",
         "-o", str(lock_path(series)), "-", "pyproject.toml"],
        input=f"apache-airflow=={spec.airflow}\n", text=True, cwd=REPO, check=True,
    )  # fmt: skip
    print(f"{lock_path(series).relative_to(REPO)}: apache-airflow {spec.airflow}, libraries as of {spec.cutoff}")


def build_venv(series: str) -> Path:
    """A fresh venv holding exactly the lock, and this provider built as a wheel."""
    venv = VENVS / f"airflow-{series}"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([uv(), "venv", "--quiet", "--python", PYTHON_VERSION, str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([uv(), "pip", "sync", "--quiet", "--python", python, str(lock_path(series))], check=True)
    subprocess.run([uv(), "pip", "install", "--quiet", "--python", python, "--no-deps", str(REPO)], check=True)
    return venv


def run(series: str) -> dict[str, object]:
    """Build the series' venv, run the subset, record the outcome; returns the result."""
    spec = SERIES[series]
    started = time.monotonic()
    venv = build_venv(series)
    built = time.monotonic()
    report = VENVS / f"airflow-{series}.junit.xml"
    # Run from a directory without the sources, so that the installed wheel is what gets imported.
    proc = subprocess.run(
        [str(venv / "bin" / "pytest"), "-p", "no:cacheprovider", "-q", "-rs", f"--rootdir={REPO}",
         f"--junitxml={report}", *(f"--ignore={REPO / p}" for p in NEWEST_ONLY), *(str(REPO / p) for p in TEST_PATHS)],
        cwd=VENVS, check=False,
    )  # fmt: skip
    counts, skips, checks = junit_summary(report)
    result: dict[str, object] = {
        "series": series,
        "airflow": spec.airflow,
        "libraries_as_of": spec.cutoff,
        "providers": installed_providers(venv),
        "exit_code": proc.returncode,
        **counts,
        "skipped_reasons": skips,
        "checks": checks,
        "venv_seconds": round(built - started, 1),
        "test_seconds": round(time.monotonic() - built, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"airflow-{series}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


#: Single checks the table shows on their own: a test's name → the column they fill.
KEY_CHECKS = {
    "test_airflow_dags_test_runs_the_hourly_sync": "airflow dags test",
    "test_ui_form_shows_every_extra_with_its_label_and_type": "connection form",
}


def junit_summary(report: Path) -> tuple[dict[str, int], list[str], dict[str, str]]:
    """Counts, distinct skip reasons and the :data:`KEY_CHECKS` outcomes of a pytest JUnit XML report."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    reasons: set[str] = set()
    checks = dict.fromkeys(KEY_CHECKS.values(), "not run")
    if not report.exists():
        return counts, [], checks
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif (skip := case.find("skipped")) is not None:
            outcome = "skipped"
            reasons.add(skip.get("message", "").removeprefix("Skipped: "))
        else:
            outcome = "passed"
        counts[outcome] += 1
        if (column := KEY_CHECKS.get(case.get("name", ""))) is not None:
            checks[column] = outcome
    return counts, sorted(reasons), checks


def installed_providers(venv: Path) -> dict[str, str]:
    out = subprocess.run(
        [uv(), "pip", "list", "--python", str(venv / "bin" / "python"), "--format", "json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return {
        p["name"].removeprefix("apache-airflow-providers-"): p["version"]
        for p in json.loads(out)
        if p["name"].startswith("apache-airflow-providers-")
    }


TABLE_START = "<!-- supported-versions: generated by `python compat/matrix.py table`, do not edit -->"
TABLE_END = "<!-- /supported-versions -->"


def table() -> str:
    """The supported-versions table, from the result files of the last matrix run."""
    rows = [
        "| Airflow | libraries as of | common-compat | tests passed | skipped | failed | `airflow dags test` "
        "| connection form in the UI | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    skip_notes: dict[str, list[str]] = {}
    for series in SERIES:
        path = RESULTS / f"airflow-{series}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        ok = r["exit_code"] == 0 and r["failed"] == 0
        rows.append(
            f"| {r['airflow']} | {r['libraries_as_of']} | {r['providers'].get('common-compat', '-')} | "
            f"{r['passed']} | {r['skipped']} | {r['failed']} | {r['checks']['airflow dags test']} | "
            f"{r['checks']['connection form']} | {'supported' if ok else 'FAILING'} |"
        )
        for reason in r["skipped_reasons"]:
            skip_notes.setdefault(reason, []).append(r["airflow"])
    notes = [f"- skipped on {', '.join(versions)}: {reason}" for reason, versions in skip_notes.items()]
    return "\n".join([TABLE_START, *rows, *([""] if notes else []), *notes, TABLE_END])


def write_table() -> None:
    text = VERSIONS_PAGE.read_text()
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    page = VERSIONS_PAGE.relative_to(REPO)
    if not pattern.search(text):
        raise SystemExit(f"{page} has no {TABLE_START!r} … {TABLE_END!r} block")
    VERSIONS_PAGE.write_text(pattern.sub(lambda _: table(), text))
    print(f"{page}: supported-versions table updated")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["lock", "run", "table"])
    parser.add_argument("series", nargs="*", help=f"Airflow series, of {', '.join(SERIES)} (default: all)")
    args = parser.parse_args()
    chosen = args.series or list(SERIES)
    if unknown := set(chosen) - set(SERIES):
        parser.error(f"unknown Airflow series {', '.join(sorted(unknown))}: choose from {', '.join(SERIES)}")
    if args.command == "table":
        write_table()
        return 0
    if args.command == "lock":
        for series in chosen:
            lock(series)
        return 0
    os.environ.pop("VIRTUAL_ENV", None)
    failed = []
    for series in chosen:
        result = run(series)
        print(
            f"== Airflow {result['airflow']}: {result['passed']} passed, {result['failed']} failed, "
            f"{result['skipped']} skipped (venv {result['venv_seconds']} s, tests {result['test_seconds']} s)",
            flush=True,
        )
        if result["exit_code"] != 0 or result["failed"]:
            failed.append(series)
    if failed:
        print(f"FAILED on Airflow {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
