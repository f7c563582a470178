"""``version_column``: only each order's newest row comes back from the warehouse — checked, not assumed.

The query is wrapped in ``ROW_NUMBER() OVER (PARTITION BY <order id> ORDER BY <version> DESC)``, quoted as
the hook's database quotes names (on MySQL ``"order_id"`` would be a string literal) and partitioned by the
id's bytes on MySQL/MariaDB (whose collations fold case and trailing spaces). Engines differ enough to lose
orders silently, so :class:`NewestRowCheck` checks every chunk before it is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.payload import InvalidOrder, render_order_id
from kapture_provider.sync.dialect import MYSQL, engine_of, quote_identifier
from kapture_provider.sync.engine import in_shard

KEY_COLUMN, ROWS_COLUMN = "_kapture_key", "_kapture_rows"
_NOTHING = object()


class SourceInconsistency(Exception):
    """The rows the warehouse returned contradict what the query promised; nothing of them was sent."""


def newest_per_order(hook: DbApiHook, sql: str, id_column: str, version_column: str) -> str:
    """Wrap ``sql`` so that only each order's newest row (by ``version_column``) comes back, sorted by order.

    Rows whose version is NULL come last on every engine (PostgreSQL and DuckDB sort NULL first
    in a descending order).
    """
    order_id = f"kapture_src.{quote_identifier(hook, id_column)}"
    version = f"kapture_src.{quote_identifier(hook, version_column)}"
    key = f"CAST(CONVERT({order_id} USING utf8mb4) AS BINARY)" if engine_of(hook) == MYSQL else order_id
    window = f"PARTITION BY {key}"
    return (
        f"SELECT * FROM (SELECT kapture_src.*, "
        f"ROW_NUMBER() OVER ({window} ORDER BY CASE WHEN {version} IS NULL THEN 1 ELSE 0 END, {version} DESC) "
        f"AS _kapture_rank, COUNT(*) OVER ({window}) AS {ROWS_COLUMN}, {key} AS {KEY_COLUMN} "
        f"FROM ({sql}\n) kapture_src) kapture_ranked WHERE _kapture_rank = 1 ORDER BY {KEY_COLUMN}"
    )


class NewestRowCheck:
    """Checks the rows of a :func:`newest_per_order` query chunk by chunk and counts the rows it folded.

    :param columns: the wrapped query's columns.
    :param id_column: the order id column.
    :param quoted: how the id column was written in the wrapper (for the error message).
    :param shard: ``(index, count)``: count the folded rows of this shard's orders only (as the sync does).
    """

    def __init__(self, columns: Sequence[str], id_column: str, quoted: str, shard: tuple[int, int] | None = None):
        self._id = list(columns).index(id_column)
        self._key = list(columns).index(KEY_COLUMN)
        self._rows = list(columns).index(ROWS_COLUMN)
        self._quoted = quoted
        self._shard = shard if shard and shard[1] > 1 else None
        self._last_key: Any = _NOTHING
        self.folded = 0  # rows of an order beyond its newest one

    def checked(self, chunks: Iterable[Sequence[Sequence[Any]]]) -> Iterator[Sequence[Sequence[Any]]]:
        """Yield each chunk once it has passed :meth:`check`."""
        for chunk in chunks:
            self.check(chunk)
            yield chunk

    def check(self, chunk: Sequence[Sequence[Any]]) -> None:
        seen: dict[str, Any] = {}
        folded = 0
        for row in chunk:
            key, raw = row[self._key], row[self._id]
            if not _same_id(key, raw):
                raise SourceInconsistency(
                    f"version_column: the newest-row query grouped the rows by {_shown(key)} instead of the "
                    f"order id ({_shown(raw)}): the warehouse did not read {self._quoted} as the column's name. "
                    "Set the connection extra 'escape_word_format' to the way this database quotes names "
                    '(e.g. "`{}`"). Nothing of this chunk was sent.'
                )
            if key == self._last_key:
                raise self._twice(raw, raw)
            self._last_key = key
            try:
                order_id: str | None = render_order_id(raw)
            except InvalidOrder:
                order_id = None  # reported with its row by the sync
            if in_shard(order_id, self._shard):
                folded += int(row[self._rows]) - 1
            if order_id is None:
                continue
            if order_id in seen:
                raise self._twice(seen[order_id], raw)
            seen[order_id] = raw
        self.folded += folded

    def _twice(self, first: Any, second: Any) -> SourceInconsistency:
        return SourceInconsistency(
            f"version_column: order {_shown(render_order_id(second))} came back twice ({_shown(first)} and "
            f"{_shown(second)}) although only its newest row should: the warehouse's ids differ where Kapture's "
            "do not (surrounding spaces), or the driver repeated a row. Make each order id unique in the query "
            "(e.g. TRIM it). Nothing of this chunk was sent."
        )


def _same_id(key: Any, raw: Any) -> bool:
    """Whether the partition key is the row's own order id (MySQL's key is its bytes in UTF-8)."""
    if isinstance(key, bytes | bytearray | memoryview):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
        return bytes(key) == text.encode("utf-8")
    return bool(key == raw)


def _shown(value: Any) -> str:
    """A value for an error text: an order id or a column name, never more than 80 characters."""
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", "replace")
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
