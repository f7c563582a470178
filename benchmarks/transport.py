"""The transport, old against new: ``python -m benchmarks.transport --baseline PATH [--runs N] [--quick]``.

``PATH`` is a checkout of the code to compare with (``git worktree add PATH <commit>``). Each run is a fresh
process that imports ``kapture_provider`` from one tree and sends orders through ``KaptureHook.update_order``
from a thread pool to the emulator (plain HTTP and HTTPS); the two trees alternate, run by run, against
the same emulator. Prints, per case, the medians and the new/old ratios, and writes them into RESULTS.md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.fixtures import WORK, EmulatorProcess

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## 9. Transport: old against new"  # this script's section of RESULTS.md (kept by benchmarks.report)


@dataclass(frozen=True)
class Case:
    name: str
    latency: float
    concurrency: int
    orders: int

    @property
    def ideal_rate(self) -> float | None:
        return self.concurrency / self.latency if self.latency else None


CASES = (
    Case("CPU per order at zero latency, c=8", 0.0, 8, 3000),
    Case("50 ms, c=16, 480 orders", 0.05, 16, 480),
    Case("50 ms, c=16, 3,000 orders", 0.05, 16, 3000),
)


def order(number: int) -> dict[str, object]:
    return {
        "customer_info": {"customer_name": f"Customer {number}", "phone": "9380491257", "update": False},
        "order_info": {"order_id": f"T-{number}", "remarks": "benchmark", "update": True},
    }


def child(url: str, ca: str | None, case: Case) -> None:
    """Send ``case.orders`` orders; print the wall time and this process's CPU time of the sending."""
    from kapture_provider.hooks.kapture import KaptureHook

    assert Path(sys.modules["kapture_provider"].__file__ or "").is_relative_to(
        Path(os.environ["PYTHONPATH"].split(os.pathsep)[0])
    )

    extra = {"ca_bundle": ca} if ca else {}
    conn = {"conn_type": "kapture", "host": url, "login": "kapture-user", "password": "kapture-password"}
    os.environ["AIRFLOW_CONN_BENCH_KAPTURE"] = json.dumps({**conn, "extra": extra})
    fixed = {"concurrency": case.concurrency} if "concurrency" in inspect.signature(KaptureHook).parameters else {}
    hook = KaptureHook("bench_kapture", pool_size=case.concurrency, max_retries=0, **fixed)  # type: ignore[arg-type]
    hook.check_settings()
    bodies = [order(n) for n in range(case.orders)]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with ThreadPoolExecutor(case.concurrency) as pool:
        list(pool.map(hook.update_order, bodies))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    print(json.dumps({"wall": wall, "cpu": cpu}))


def run_once(tree: Path, url: str, ca: str | None, case: Case) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{REPO}", "AIRFLOW_HOME": str(WORK / "airflow-home")}
    command = [sys.executable, __file__, "--child", url, ca or "", json.dumps(case.__dict__)]  # tree first on the path
    done = subprocess.run(command, env=env, cwd=WORK, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the run on {tree} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"rate": case.orders / result["wall"], "cpu_ms": 1000 * result["cpu"] / case.orders}


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), valid for a day."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="checkout of the code to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one run of each, 480 orders at most")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, ca, case = args.child
        child(url, ca or None, Case(**json.loads(case)))
        return
    if args.baseline is None:
        parser.error("--baseline PATH is required")
    trees = {"old": args.baseline.resolve(), "new": REPO}
    runs = 1 if args.quick else args.runs
    cases = [Case(c.name, c.latency, c.concurrency, min(c.orders, 480) if args.quick else c.orders) for c in CASES]
    WORK.mkdir(parents=True, exist_ok=True)
    cert, key = certificate(WORK)
    rows = []
    for scheme in ("http", "https"):
        for case in cases:
            tls = scheme == "https"
            with EmulatorProcess(latency=case.latency, tls_cert=cert if tls else None, tls_key=key) as emulator:
                ca = str(cert) if tls else None
                figures: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
                for _ in range(runs):
                    for name, tree in trees.items():
                        figures[name].append(run_once(tree, emulator.url, ca, case))
            rows.append((scheme, case, {n: _medians(f) for n, f in figures.items()}))
            _print_row(*rows[-1])
    lines = RESULTS.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line == HEADING), len(lines))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = _markdown(rows, runs).splitlines()
    RESULTS.write_text("\n".join([*lines[:start], *section, *([""] if end < len(lines) else []), *lines[end:]]) + "\n")
    print(f"{RESULTS.relative_to(REPO)}: transport section written")


def _medians(figures: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(f[key] for f in figures) for key in figures[0]}


def _print_row(scheme: str, case: Case, medians: dict[str, dict[str, float]]) -> None:
    old, new = medians["old"], medians["new"]
    print(
        f"{scheme:5} {case.name:38} rate {old['rate']:7.1f} -> {new['rate']:7.1f}/s "
        f"cpu {old['cpu_ms']:.3f} -> {new['cpu_ms']:.3f} ms/order (x{new['cpu_ms'] / old['cpu_ms']:.2f})"
    )


def _markdown(rows: list[tuple[str, Case, dict[str, dict[str, float]]]], runs: int) -> str:
    lines = [
        HEADING,
        "",
        f"`python -m benchmarks.transport`, {runs} alternating runs of each tree per case, medians. Rate: orders",
        "per second of client wall time (connections opened included); CPU: the client process's CPU per order.",
        "",
        "| scheme | case | rate old | rate new | of ideal (new) | CPU old (ms) | CPU new (ms) | CPU new/old |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scheme, case, medians in rows:
        old, new = medians["old"], medians["new"]
        ideal = f"{100 * new['rate'] / case.ideal_rate:.1f}%" if case.ideal_rate else "—"
        lines.append(
            f"| {scheme} | {case.name} | {old['rate']:.1f}/s | {new['rate']:.1f}/s | {ideal} | "
            f"{old['cpu_ms']:.3f} | {new['cpu_ms']:.3f} | {new['cpu_ms'] / old['cpu_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
