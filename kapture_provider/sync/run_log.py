"""The run log: one row per successful sync run, beside the ledger, in the same database.

It remembers which window each task synced, so that a run without a logical date (Airflow 3 allows
one) can carry on from where the last successful run stopped. The table is ``<ledger table>_runs``.
"""

from __future__ import annotations

import datetime as dt
from contextlib import closing
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.sync.times import parse_time, time_text


class RunLog:
    """Reads and writes ``<ledger table>_runs`` through a common-sql ``DbApiHook``."""

    def __init__(self, hook: DbApiHook, ledger_table: str):
        self.hook = hook
        self.table = f"{ledger_table}_runs"

    def last_synced_until(self, dag_id: str, task_id: str, shard_index: int) -> dt.datetime | None:
        """The end of the newest window this task (this shard of it) synced successfully, or None."""
        p = self.hook.placeholder
        with closing(self.hook.get_conn()) as conn, closing(conn.cursor()) as cur:
            self._create(conn, cur)
            cur.execute(
                f"SELECT MAX(window_end) FROM {self.table} WHERE dag_id = {p} AND task_id = {p} AND shard_index = {p}",
                (dag_id, task_id, shard_index),
            )
            row = cur.fetchone()
        return parse_time(row[0]) if row and row[0] else None

    def record(
        self, dag_id: str, task_id: str, shard_index: int, run_id: str, start: dt.datetime, end: dt.datetime
    ) -> None:
        """Note that this task synced the window ``[start, end)`` successfully."""
        p = self.hook.placeholder
        values: tuple[Any, ...] = (
            dag_id, task_id, shard_index, run_id, time_text(start), time_text(end), time_text(dt.datetime.now(dt.UTC)),
        )  # fmt: skip
        with closing(self.hook.get_conn()) as conn, closing(conn.cursor()) as cur:
            self._create(conn, cur)
            cur.execute(
                f"INSERT INTO {self.table} (dag_id, task_id, shard_index, run_id, window_start, window_end, "
                f"finished_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
                values,
            )
            conn.commit()

    def _create(self, conn: Any, cur: Any) -> None:
        """Create the table if missing; safe when the shards of a sync finish at once.

        PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` is not atomic: the sessions racing the one that creates
        the table fail ("duplicate key … pg_type"); they roll back and find the table there.
        """
        try:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (dag_id VARCHAR(250) NOT NULL, "
                "task_id VARCHAR(250) NOT NULL, shard_index INTEGER NOT NULL, run_id VARCHAR(250) NOT NULL, "
                "window_start VARCHAR(32) NOT NULL, window_end VARCHAR(32) NOT NULL, finished_at VARCHAR(32) NOT NULL)"
            )
            conn.commit()
        except Exception:
            conn.rollback()
            cur.execute(f"SELECT 1 FROM {self.table} WHERE 1 = 0")  # raises when the table is really missing
            cur.fetchall()
