"""What a sync did, as metrics through Airflow's own ``Stats`` (StatsD, Datadog or OpenTelemetry).

Airflow's ``[metrics]`` settings apply: the backend, the prefix, the allow and block lists. The order
counters come from a run's summary when it ends; requests, 429/503 answers, ``Retry-After`` pauses and
Kapture's latency come from the hook as they happen (:class:`RequestMetrics`). Names: docs/metrics.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from kapture_provider.compat import Stats, conf

#: Answers counted apart (``kapture.answers.429``…): Kapture asking the sync to slow down.
COUNTED_STATUSES = frozenset({429, 503})


def metrics_enabled() -> bool:
    """Whether Airflow sends metrics anywhere; when it does not, nothing here does any work."""
    return any(
        conf.getboolean("metrics", option, fallback=False)
        for option in ("statsd_on", "statsd_datadog_enabled", "otel_on")
    )


def task_tags(dag_id: str, task_id: str, shard: int | None = None) -> dict[str, str]:
    """The tags every metric of one task carries (backends without tags drop them)."""
    tags = {"dag_id": dag_id, "task_id": task_id}
    if shard is not None:
        tags["shard"] = str(shard)
    return tags


class RequestMetrics:
    """Per-request metrics, reported by a :class:`~kapture_provider.hooks.kapture.KaptureHook` (its ``metrics``)."""

    def __init__(self, tags: Mapping[str, str]):
        self.tags = dict(tags)

    def answered(self, status: int | None, seconds: float) -> None:
        """One request done: its latency, and the answer's status when Kapture asked to slow down
        (``None``: no answer, the connection failed)."""
        Stats.timing("kapture.latency", dt.timedelta(seconds=seconds), tags=self.tags)
        if status in COUNTED_STATUSES:
            Stats.incr(f"kapture.answers.{status}", tags=self.tags)

    def paused(self, seconds: float) -> None:
        """Every sending thread waits for a ``Retry-After``."""
        Stats.incr("kapture.retry_after_pauses", tags=self.tags)


def emit_run(
    tags: Mapping[str, str],
    *,
    requests: int,
    delivered: int,
    refused: int,
    undelivered: int,
    invalid: int,
    unchanged: int = 0,
    stale: int = 0,
    parked: int = 0,
) -> None:
    """The order counters of one run (those that are not zero), and its request count."""
    counts = {
        "kapture.requests": requests,
        "kapture.orders.delivered": delivered,
        "kapture.orders.refused": refused,
        "kapture.orders.undelivered": undelivered,
        "kapture.orders.invalid": invalid,
        "kapture.orders.unchanged": unchanged,
        "kapture.orders.stale": stale,
        "kapture.orders.parked": parked,
    }
    for name, count in counts.items():
        if count:
            Stats.incr(name, count, tags=dict(tags))


def emit_owed(tags: Mapping[str, str], *, owed: int, oldest_owed_age: dt.timedelta | None) -> None:
    """Gauges after a run: orders the ledger still owes Kapture, and for how long the oldest has been failing."""
    Stats.gauge("kapture.orders.owed", owed, tags=dict(tags))
    age = oldest_owed_age.total_seconds() if oldest_owed_age is not None else 0.0
    Stats.gauge("kapture.orders.oldest_owed_age_seconds", round(age, 3), tags=dict(tags))
