"""The Kapture page's chart: orders delivered, refused and still owed per run, drawn as SVG on the server.

One group of three bars per run, oldest on the left: delivered (the run's ``succeeded``), refused (its
``failed``) and owed (``still_owed``: what the ledger owed Kapture after the run). The shards of a mapped
run are added up (owed is the ledger's, so the largest is shown). No script, nothing downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kapture_provider.ui.runs import TaskRun

WIDTH, HEIGHT = 640, 200
LEFT, BOTTOM, TOP = 40, 36, 12
SERIES = (("delivered", "succeeded", "#2f855a"), ("refused", "failed", "#c53030"), ("owed", "still_owed", "#b7791f"))


@dataclass(frozen=True)
class Bar:
    series: str  # delivered, refused or owed
    color: str
    x: float
    y: float
    width: float
    height: float
    value: int
    run_id: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    baseline: float
    top: float
    largest: int
    bars: list[Bar]
    labels: list[tuple[float, str]]  # x, text under each run's group
    series: tuple[tuple[str, str, str], ...] = SERIES


def run_chart(runs: Sequence[TaskRun]) -> Chart | None:
    """The chart of these runs (newest first, as a sync task lists them), or None when none has a summary."""
    totals: dict[str, dict[str, int]] = {}
    labels: dict[str, str] = {}
    for run in reversed(runs):
        if run.summary is None:
            continue
        counts = totals.setdefault(run.run_id, dict.fromkeys(("succeeded", "failed", "still_owed"), 0))
        counts["succeeded"] += int(run.summary.get("succeeded") or 0)
        counts["failed"] += int(run.summary.get("failed") or 0)
        counts["still_owed"] = max(counts["still_owed"], int(run.summary.get("still_owed") or 0))
        start = (run.window or {}).get("start") or run.logical_date or run.run_after or ""
        labels[run.run_id] = start[5:16].replace("T", " ")  # MM-DD HH:MM
    if not totals:
        return None
    largest = max(max(counts.values()) for counts in totals.values()) or 1
    baseline, plot_height = HEIGHT - BOTTOM, HEIGHT - BOTTOM - TOP
    group = (WIDTH - LEFT) / len(totals)
    bar_width = min(group / 4, 28)
    bars, label_marks = [], []
    for position, (run_id, counts) in enumerate(totals.items()):
        left = LEFT + position * group + (group - 3 * bar_width) / 2
        for offset, (name, key, color) in enumerate(SERIES):
            height = plot_height * counts[key] / largest
            bars.append(
                Bar(name, color, left + offset * bar_width, baseline - height, bar_width, height, counts[key], run_id)
            )
        label_marks.append((LEFT + (position + 0.5) * group, labels[run_id]))
    return Chart(WIDTH, HEIGHT, baseline, TOP, largest, bars, label_marks)
