"""The ledger's own connection, tuned per engine, and SQLite's write-ahead-log checkpoints.

Every engine trades the last fraction of a second of commits in a crash (those orders are sent again;
nothing is corrupted) for commits without a flush each: SQLite in WAL mode without an fsync per commit,
PostgreSQL with ``synchronous_commit`` off; MySQL/MariaDB never autocommit (a batch is one transaction).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from contextlib import closing
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook

from kapture_provider.sync.dialect import LEDGER_DATABASES, LEDGER_DRIVERS, MYSQL, POSTGRES, SQLITE, driver_name
from kapture_provider.sync.ledger_sql import LedgerNotSupported

log = logging.getLogger(__name__)


def open_connection(engine: str, hook: DbApiHook) -> Any:
    """A new connection to the ledger's database, tuned for it; :class:`LedgerNotSupported` for another driver."""
    conn = _sqlite_connection(hook) if engine == SQLITE else hook.get_conn()
    if driver_name(conn) not in LEDGER_DRIVERS[engine]:
        conn.close()
        raise LedgerNotSupported(
            f"the change ledger cannot be kept through the {driver_name(conn)!r} driver of connection "
            f"{hook.get_conn_id()!r}; it needs {LEDGER_DATABASES}"
        )
    if engine in (POSTGRES, MYSQL):
        setting = "SET synchronous_commit TO OFF" if engine == POSTGRES else "SET SESSION autocommit = 0"
        with closing(conn.cursor()) as cur:
            cur.execute(setting)
        conn.commit()
    return conn


def _sqlite_connection(hook: DbApiHook) -> sqlite3.Connection:
    """The hook's database file reopened so that other threads may use it (one at a time), in autocommit,
    in WAL mode (the warehouse can be read while the ledger is written) with :class:`WalCheckpoints`."""
    conn = hook.get_conn()
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    conn.close()
    if not path:
        raise ValueError("the ledger needs a SQLite database file: an in-memory database is gone after the task")
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # WalCheckpoints runs them, outside the ledger's lock
    return conn


class WalCheckpoints:
    """Copies the SQLite ledger's write-ahead log into the database file every ``every`` records.

    SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages, while the ledger's
    lock holds every sending thread. Here the thread whose record is due runs a passive checkpoint on a
    connection of its own once its commit is done, outside that lock, so the others keep recording; a
    checkpoint already running is not waited for.
    """

    def __init__(self, path: str, every: int = 250):
        self._path = path
        self._every = every
        self._records = itertools.count(1)
        self._running = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def committed(self) -> None:
        if next(self._records) % self._every or not self._running.acquire(blocking=False):
            return
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as err:  # nothing is lost: the commits are in the WAL, and the next one retries
            log.warning("SQLite ledger: WAL checkpoint failed (%s); retried after the next commits", err)
        finally:
            self._running.release()

    def close(self) -> None:
        with self._running:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
