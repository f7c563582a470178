"""The adaptive-concurrency grid: ``python -m benchmarks.grid [--quick]``.

For each Kapture latency × rate limit (the emulator's, unannounced: 429 with Retry-After), a sweep of
fixed concurrencies finds the best fixed rate, then a run with the default (adaptive) settings is
compared with min(the limit, that rate); then a step (Kapture slows from 50 to 300 ms mid-run) and its
plot. Writes section 8 of ``benchmarks/RESULTS.md`` and ``benchmarks/concurrency_step.png``.
The client runs in this process (``OrderSync`` on generated rows, no ledger: the controller is what is
measured); the emulator in its own.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from benchmarks import report
from benchmarks.fixtures import EMULATOR_PASSWORD, EMULATOR_USER, WORK, EmulatorProcess
from benchmarks.isolation import prepare_environment
from kapture_provider.hooks.concurrency import INITIAL

HEADING = "## 8. Adaptive concurrency"
PLOT = report.HERE / "concurrency_step.png"
LATENCIES = (0.02, 0.05, 0.15, 0.3, 0.5)
LIMITS: tuple[float | None, ...] = (None, 50.0, 200.0)
CLIENT_RATE = 2500.0  # requests/s this client reaches on this VM at most, only to size the runs
GOAL_SHARE, GOAL_THROTTLED = 0.90, 0.02
STEP_FROM, STEP_TO, STEP_AT = 0.05, 0.3, 10.0


@dataclass(frozen=True)
class Settings:
    mode: str
    fixed: tuple[int, ...]  # the sweep
    sweep_seconds: float  # per fixed run
    adaptive_seconds: float
    step_after_s: float  # how long the step run goes on after the step


FULL = Settings("full", (4, 8, 16, 32, 64), 4.0, 20.0, 15.0)
QUICK = Settings("quick", (8, 32, 64), 2.0, 8.0, 12.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three fixed values, short runs: a few minutes")
    parser.add_argument("--cells", help="only these cells, e.g. '0.3:50,0.05:none' (RESULTS.md is not written)")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    prepare_environment()
    machine = report.machine_info()
    started = time.monotonic()
    cells = [(lat, lim) for lat in LATENCIES for lim in LIMITS]
    if args.cells:
        cells = [_parse_cell(cell) for cell in args.cells.split(",")]
    with EmulatorProcess() as emulator:
        _connect(emulator.url)
        rows = [grid_cell(emulator, s, latency, limit) for latency, limit in cells]
        step = None if args.cells else step_run(emulator, s, rows)
    machine["load_after"] = report.load_average()
    machine["duration_s"] = time.monotonic() - started
    results = {"settings": s.__dict__, "machine": machine, "rows": rows, "step": step}
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / f"grid-{s.mode}.json").write_text(json.dumps(results, indent=1, default=str))
    passed = all(row["passed"] for row in rows) and (step is None or step["passed"])
    if step is not None:
        plot_step(step)
        report.replace_section(HEADING, section(s, machine, rows, step))
    print(f"{'PASS' if passed else 'FAIL'} in {machine['duration_s']:.0f} s", flush=True)
    return 0 if passed else 1


def _parse_cell(text: str) -> tuple[float, float | None]:
    latency, _, limit = text.partition(":")
    return float(latency), None if limit in ("", "none") else float(limit)


def _connect(url: str) -> None:
    os.environ["AIRFLOW_CONN_KAPTURE_DEFAULT"] = json.dumps(
        {"conn_type": "kapture", "host": url, "login": EMULATOR_USER, "password": EMULATOR_PASSWORD}
    )


def one_run(emulator: EmulatorProcess, orders: int, *, concurrency: int | None, during: Any = None) -> dict[str, Any]:
    """Sync ``orders`` new orders with the default settings, or a fixed ``concurrency``; what arrived."""
    from kapture_provider.hooks.kapture import KaptureHook  # imports Airflow
    from kapture_provider.sync.engine import OrderSync

    emulator.reset()
    prefix = f"G{time.monotonic_ns()}-"
    rows = [(f"{prefix}{n}", f"Customer {n}") for n in range(orders)]
    hook = KaptureHook(concurrency=concurrency, pool_size=concurrency or 64)
    engine = OrderSync(hook, None, progress_seconds=3600)
    if during is not None:
        during(hook)
    started = time.monotonic()
    try:
        summary = engine.run(["order_id", "customer_name"], [rows])
    finally:
        hook.close()
    wall = time.monotonic() - started
    stats = emulator.stats()
    if stats["orders"] != orders or summary.succeeded != orders:
        raise RuntimeError(f"{orders} orders, {summary.succeeded} delivered, the emulator holds {stats['orders']}")
    return {
        "orders": orders,
        "rate": orders / wall,
        "wall_s": wall,
        "requests": stats["requests"],
        "throttled": stats["rate_limited"],
        "throttled_share": stats["rate_limited"] / stats["requests"],
        "concurrency": summary.concurrency,
        "learned_rate_limit": summary.learned_rate_limit,
        "hook": hook,
    }


def _orders(seconds: float, latency: float, limit: float | None, concurrency: int) -> int:
    expected = min(concurrency / latency, limit or CLIENT_RATE, CLIENT_RATE)
    return max(40, int(expected * seconds))


def grid_cell(emulator: EmulatorProcess, s: Settings, latency: float, limit: float | None) -> dict[str, Any]:
    emulator.configure(latency=latency, rate_limit=limit)
    sweep = {}
    for concurrency in s.fixed:
        run = one_run(emulator, _orders(s.sweep_seconds, latency, limit, concurrency), concurrency=concurrency)
        sweep[concurrency] = {k: v for k, v in run.items() if k != "hook"}
    best = max(sweep, key=lambda c: sweep[c]["rate"])
    adaptive = one_run(emulator, _orders(s.adaptive_seconds, latency, limit, max(s.fixed)), concurrency=None)
    adaptive.pop("hook")
    goal = min(limit or float("inf"), sweep[best]["rate"])
    share = adaptive["rate"] / goal
    passed = share >= GOAL_SHARE and adaptive["throttled_share"] <= GOAL_THROTTLED
    row = {
        "latency": latency, "limit": limit, "sweep": sweep, "best_fixed": best, "adaptive": adaptive,
        "goal_rate": goal, "share": share, "passed": passed,
    }  # fmt: skip
    print(
        f"  {1000 * latency:3.0f} ms, limit {limit or 'none'}: best fixed {best} = {sweep[best]['rate']:.1f}/s; "
        f"adaptive {adaptive['rate']:.1f}/s = {share:.1%} of {goal:.1f}, 429s {adaptive['throttled_share']:.2%}, "
        f"settled at {adaptive['concurrency']} {'PASS' if passed else 'FAIL'}",
        flush=True,
    )
    return row


def step_run(emulator: EmulatorProcess, s: Settings, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Default settings; Kapture slows from 50 to 300 ms after ``STEP_AT`` s. The goal after the step: 90% of
    the best fixed rate of the grid's 300 ms cell without a limit."""
    after = next((r for r in rows if r["latency"] == STEP_TO and r["limit"] is None), None)
    goal = after["sweep"][after["best_fixed"]]["rate"] if after else max(LATENCIES) / STEP_TO
    emulator.configure(latency=STEP_FROM, rate_limit=None)
    orders = int(min(CLIENT_RATE, 64 / STEP_FROM) * STEP_AT + goal * s.step_after_s)
    timer: list[threading.Timer] = []

    def slow_down_later(hook: Any) -> None:
        timer.append(threading.Timer(STEP_AT, emulator.configure, kwargs={"latency": STEP_TO}))
        timer[0].start()

    run = one_run(emulator, orders, concurrency=None, during=slow_down_later)
    timer[0].cancel()
    hook = run.pop("hook")
    arrivals = [r["received_at"] for r in emulator.requests() if r["status"] == 200]
    first = arrivals[0]
    step_at = first + STEP_AT  # epoch; the emulator changed its latency then (within a few ms)
    rate = _per_second([at - first for at in arrivals])
    offset = time.time() - time.monotonic()  # the controller's monotonic clock onto the emulator's epoch
    limits = [(at + offset - first, limit) for at, limit in hook.concurrency.limit.history]
    after_step = range(int(STEP_AT), len(rate))  # whole seconds from the step on
    # back: from this second on, every second at >= 90% of the goal until the end
    back = [t for t in after_step if all(rate[u] >= GOAL_SHARE * goal for u in range(t, len(rate)))]
    recovered = back[0] - STEP_AT if back else None
    print(f"  step 50 -> 300 ms: back at >= 90% of {goal:.0f}/s from {recovered} s after the step on", flush=True)
    return {
        "orders": orders, "goal_rate": goal, "rate_per_second": rate, "limits": limits, "step_at_s": STEP_AT,
        "recovered_after_s": recovered, "passed": recovered is not None and recovered <= 10.0,
        "throttled": run["throttled"], "step_epoch": step_at,
        "lowest_after_step": min((rate[t] for t in after_step), default=0),
    }  # fmt: skip


def _per_second(times: list[float]) -> list[int]:
    counts = [0] * (int(times[-1]) + 1)
    for at in times:
        counts[int(at)] += 1
    return counts[:-1]  # the last, partial second is the drain


def plot_step(step: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, rate_axis = plt.subplots(figsize=(10, 5))
    rate = step["rate_per_second"]
    rate_axis.bar([i + 0.5 for i in range(len(rate))], rate, width=1.0, color="#4c8bd6", label="accepted/s")
    rate_axis.axhline(step["goal_rate"], color="grey", linestyle="--", linewidth=1,
                      label=f"best fixed at 300 ms: {step['goal_rate']:.0f}/s")  # fmt: skip
    rate_axis.axvline(step["step_at_s"], color="black", linestyle=":", linewidth=1, label="50 → 300 ms")
    rate_axis.set_xlabel("seconds since the first request")
    rate_axis.set_ylabel("orders per second (emulator)")
    limit_axis = rate_axis.twinx()
    if step["limits"]:
        xs = [0.0] + [t for t, _ in step["limits"]] + [len(rate)]
        ys = [INITIAL] + [v for _, v in step["limits"]] + [step["limits"][-1][1]]
        limit_axis.step(xs, ys, where="post", color="#d6784c", label="concurrency limit")
    limit_axis.set_ylabel("requests in flight at most")
    limit_axis.set_ylim(0, 70)
    lines = rate_axis.get_legend_handles_labels()
    more = limit_axis.get_legend_handles_labels()
    rate_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    rate_axis.set_title("Default settings; Kapture slows from 50 to 300 ms mid-run")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)
    plt.close(figure)


def section(s: Settings, machine: dict[str, Any], rows: list[dict[str, Any]], step: dict[str, Any]) -> list[str]:
    lines = [
        "",
        HEADING,
        "",
        f"`python -m benchmarks.grid{' --quick' if s.mode == 'quick' else ''}`, {machine['date']}, "
        f"{machine['cores']} cores, load average {machine['load_before']} before, {machine['load_after']} after "
        f"({machine['duration_s']:.0f} s). Each cell: the emulator at that latency and rate limit (429 with "
        f"Retry-After 1 above it, the limit told in advance to nobody); fixed concurrencies {list(s.fixed)} "
        f"({s.sweep_seconds:g} s runs) with today's rate control, then the default settings (adaptive, ceiling "
        f"64; a {s.adaptive_seconds:g} s run). Rate = orders delivered ÷ the sync's wall time, start and "
        f"drain included. Goal: ≥ {GOAL_SHARE:.0%} of min(limit, best fixed rate), ≤ {GOAL_THROTTLED:.0%} "
        "of requests answered 429.",
        "",
        "| latency | limit | best fixed (rate) | adaptive rate | share | 429s | settled at | learned limit | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, best = r["adaptive"], r["sweep"][r["best_fixed"]]
        learned = f"{a['learned_rate_limit']:.1f}/s" if a["learned_rate_limit"] else "-"
        limit = f"{r['limit']:g}/s" if r["limit"] else "none"
        lines.append(
            f"| {1000 * r['latency']:.0f} ms | {limit} | "
            f"{r['best_fixed']} ({best['rate']:.1f}/s) | {a['rate']:.1f}/s | {r['share']:.1%} | "
            f"{a['throttled_share']:.2%} ({a['throttled']}) | {a['concurrency']} | {learned} | "
            f"{'PASS' if r['passed'] else 'FAIL'} |"
        )
    recovered = step["recovered_after_s"]
    lines += [
        "",
        f"Step: default settings, the emulator's latency 50 ms, then 300 ms from {step['step_at_s']:g} s on "
        f"(no limit): back at ≥ {GOAL_SHARE:.0%} of the best fixed rate at 300 ms ({step['goal_rate']:.0f}/s) "
        + (f"from {recovered:.0f} s after the step on" if recovered is not None else "never")
        + f", every second (goal ≤ 10 s: {'PASS' if step['passed'] else 'FAIL'}); the slowest second "
        f"after the step: {step['lowest_after_step']} orders; {step['throttled']} × 429. "
        "![concurrency and rate over time](concurrency_step.png)",
    ]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
