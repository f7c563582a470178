"""Times in the ledger, its run log and its lease: UTC text, which sorts in time order on every engine."""

from __future__ import annotations

import datetime as dt

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def time_text(value: dt.datetime) -> str:
    """A time as the ledger writes it (:data:`TIME_FORMAT`); ``isoformat`` is twice as fast as ``strftime``,
    and the base class's is called so that a pendulum ``DateTime`` is written the same way."""
    return dt.datetime.isoformat(value.astimezone(dt.UTC), timespec="microseconds")[:-6] + "Z"


def parse_time(text: str) -> dt.datetime:
    """A time the ledger wrote, aware (UTC)."""
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.UTC)
