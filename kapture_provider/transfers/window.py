"""The time window one sync run reads: the rows changed in ``[start, end)``.

First match wins: the run's ``window_start``/``window_end`` params, the run's data interval, or (a run
without a logical date) from the end of the last window this task synced until the run was triggered. A
window from params is a one-off and never moves where the next run starts. The rules: docs/sql-to-kapture.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pendulum

#: How window bounds are bound as query parameters: UTC text, which SQLite stores and other engines cast.
BOUND_FORMAT = "%Y-%m-%d %H:%M:%S"
START_PARAM, END_PARAM = "window_start", "window_end"
FROM_PARAMS = "the run's window params"


class WindowError(ValueError):
    """The run's window cannot be worked out, or is empty; the text says what to change."""


@dataclass(frozen=True)
class SyncWindow:
    """``[start, end)``, aware and in UTC, and where it came from."""

    start: dt.datetime
    end: dt.datetime
    source: str

    @property
    def start_text(self) -> str:
        return self.start.strftime(BOUND_FORMAT)

    @property
    def end_text(self) -> str:
        return self.end.strftime(BOUND_FORMAT)

    def describe(self) -> str:
        return f"[{self.start_text}, {self.end_text}) UTC ({self.source})"

    @property
    def continues_the_schedule(self) -> bool:
        """Whether a run without a logical date may carry on from this window's end (not a manual window)."""
        return self.source != FROM_PARAMS

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "source": self.source}


def resolve_window(context: Mapping[str, Any], last_synced_until: Callable[[], dt.datetime | None]) -> SyncWindow:
    """The window of the run described by ``context`` (see the module docstring for the order)."""
    params = context.get("params") or {}
    start, end = params.get(START_PARAM), params.get(END_PARAM)
    if start or end:
        if not (start and end):
            missing = END_PARAM if start else START_PARAM
            raise WindowError(f"param {missing!r} is not set: give both {START_PARAM} and {END_PARAM}, or neither")
        return _checked(_parse(start, START_PARAM), _parse(end, END_PARAM), FROM_PARAMS)
    interval_start, interval_end = context.get("data_interval_start"), context.get("data_interval_end")
    if interval_start is not None and interval_end is not None:
        if interval_start == interval_end:
            raise WindowError(
                f"the run's data interval is empty (start = end = {interval_start}): a cron string or timedelta "
                "schedule gives CronTriggerTimetable, whose runs select nothing. Schedule the DAG with "
                "CronDataIntervalTimetable (from kapture_provider.compat) instead"
            )
        return _checked(interval_start, interval_end, "the run's data interval")
    until = _triggered_at(context)
    synced = last_synced_until()
    if synced is not None:
        return _checked(synced, until, "a run without a logical date: since the last successful sync")
    dag = context.get("dag")
    first = getattr(dag, "start_date", None)
    if first is None:
        raise WindowError(
            f"a run without a logical date, no earlier successful sync and no DAG start_date: "
            f"trigger it with the {START_PARAM} and {END_PARAM} params"
        )
    return _checked(first, until, "a run without a logical date: first sync, since the DAG's start_date")


def _triggered_at(context: Mapping[str, Any]) -> dt.datetime:
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None)
    return run_after if isinstance(run_after, dt.datetime) else dt.datetime.now(dt.UTC)


def _parse(value: Any, name: str) -> dt.datetime:
    parsed: object = value
    if not isinstance(value, dt.datetime):
        try:
            parsed = pendulum.parse(str(value))
        except ValueError:  # pendulum's ParserError is a ValueError
            parsed = None
    if not isinstance(parsed, dt.datetime):
        raise WindowError(f"param {name!r} is not a date-time (ISO 8601, e.g. 2026-11-26T02:00:00Z): {value!r}")
    return _aware(parsed)


def _checked(start: dt.datetime, end: dt.datetime, source: str) -> SyncWindow:
    start, end = _aware(start), _aware(end)
    if not start < end:
        raise WindowError(f"the sync window is empty or reversed: start {start.isoformat()} >= end {end.isoformat()}")
    return SyncWindow(start, end, source)


def _aware(value: dt.datetime) -> dt.datetime:
    """In UTC; a naive value is taken as UTC already."""
    return value.astimezone(dt.UTC) if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
