"""Versions of an order's row (a number, a time or text) as the ledger keeps them: text that still orders.

The engine encodes each row's ``version_column`` value; the ledger stores the text; a row older than the
newest version sent is stale.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any


def encode_version(value: Any) -> str | None:
    """A version value (number, datetime, date or text) as text whose order :func:`version_key` restores."""
    if value is None:
        return None
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int | float | Decimal):
        return f"n:{value}"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return "t:" + value.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, dt.date):
        return "t:" + dt.datetime(value.year, value.month, value.day).isoformat(sep=" ", timespec="microseconds")
    text = str(value)  # a lone surrogate (no database stores one) is escaped so that the ledger can store it
    text = text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"s:{text}"[:255]  # the width of the version columns; longer texts compare by their start


def version_key(encoded: str) -> tuple[int, Any]:
    """Sort key of an encoded version; numbers compare as numbers, times and text as text."""
    kind, _, text = encoded.partition(":")
    if kind == "n":
        return (0, Decimal(text))
    return (1, text) if kind == "t" else (2, text)


def is_older(version: str | None, than: str | None) -> bool:
    """True when ``version`` is strictly older than ``than`` (unknown versions are never older)."""
    if version is None or than is None:
        return False
    try:
        return version_key(version) < version_key(than)
    except ArithmeticError:  # a NaN version (decimal.InvalidOperation) orders nothing: unknown
        return False
