"""The lease: one run at a time per ledger table and shard, held in the ledger's own database.

PostgreSQL and MySQL/MariaDB hold a session-level advisory lock (it dies with the session); SQLite and
DuckDB hold a row with an expiry that a heartbeat renews while the run lasts. Either way the holder is
written to ``<ledger table>_lease``, so that a waiting run can say which run it waits for. Shards of
different counts on one ledger wait for each other whenever their orders can overlap.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from contextlib import closing, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kapture_provider.sync.dialect import DUCKDB, MYSQL, POSTGRES, SQLITE
from kapture_provider.sync.ledger_connection import open_connection
from kapture_provider.sync.times import time_text

if TYPE_CHECKING:
    from kapture_provider.sync.ledger import Ledger

log = logging.getLogger(__name__)
#: DuckDB opens a database file in one process only: its lease rows are taken under this process's lock.
_DUCKDB_REGISTRY = threading.Lock()


@dataclass(frozen=True)
class LeaseHolder:
    """The run that holds (or asks for) a lease, as a waiting run names it."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    hostname: str = ""
    pid: int = 0

    @classmethod
    def this_process(cls, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> LeaseHolder:
        return cls(dag_id, run_id, task_id, map_index, socket.gethostname(), os.getpid())

    def __str__(self) -> str:
        task = f"{self.dag_id}.{self.task_id}" + (f"[{self.map_index}]" if self.map_index >= 0 else "")
        return f"run {self.run_id!r} of {task} on {self.hostname} (pid {self.pid})"


class LeaseTimeout(RuntimeError):
    """Another run held the ledger's lease for longer than this run was allowed to wait."""


def shards_overlap(one: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether shard ``(index, count)`` and another can hold the same order (``crc32(id) % count == index``)."""
    return one[0] % math.gcd(one[1], other[1]) == other[0] % math.gcd(one[1], other[1])


class Lease:
    """The lease of one ledger table's shard, taken by ``with lease:`` (waits up to ``timeout`` seconds).

    :param ledger: the ledger whose database holds the lease (a connection of the lease's own is opened).
    :param holder: the run taking it.
    :param shard: ``(index, count)`` of the orders this run handles.
    :param timeout: how long to wait for another run's lease before :class:`LeaseTimeout`.
    :param expiry: SQLite and DuckDB: a lease row whose heartbeat stopped this long ago is taken over.
    :param poll_seconds: how often a waiting run tries again.
    :param log_seconds: how often a waiting run says so (at most).
    """

    def __init__(
        self,
        ledger: Ledger,
        holder: LeaseHolder,
        *,
        shard: tuple[int, int] = (0, 1),
        timeout: float = 3600.0,
        expiry: float = 60.0,
        poll_seconds: float = 0.5,
        log_seconds: float = 30.0,
    ):
        self.ledger = ledger
        self.table = f"{ledger.table}_lease"
        self.holder = holder
        self.shard = shard
        self.key = f"{shard[0]}/{shard[1]}"
        self.timeout = timeout
        self.expiry = expiry
        self.poll_seconds = poll_seconds
        self.log_seconds = log_seconds
        self._engine = ledger.dialect.engine
        self._p = ledger.dialect.placeholder
        self._token = uuid.uuid4().hex  # this holding, whatever the holder's text
        self._conn: Any = None
        self._conn_lock = threading.Lock()  # the heartbeat and the run share the lease's connection
        self._namespace = ""  # the schema or database an unqualified table name lives in
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def advisory(self) -> bool:
        """Whether the engine holds the lease as an advisory lock (else as a row with an expiry)."""
        return self._engine in (POSTGRES, MYSQL)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    # -- taking and giving back -----------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease, waiting while another run holds an overlapping one (up to ``timeout``)."""
        self._conn = open_connection(self._engine, self.ledger.hook)
        try:
            self._create_table()
            started = time.monotonic()
            logged = -math.inf
            while (blocker := self._attempt()) is not None:
                waited = time.monotonic() - started
                if waited >= self.timeout:
                    raise LeaseTimeout(
                        f"gave up after {waited:.0f} s (lease_timeout {self.timeout:g} s) waiting for the lease of "
                        f"ledger {self.ledger.table} shard {self.key}: it is held by {blocker}; nothing was sent"
                    )
                if time.monotonic() - logged >= self.log_seconds:
                    log.info(
                        "Waiting for the lease of ledger %s shard %s, held by %s (%.0f s so far, up to %g s)",
                        self.ledger.table, self.key, blocker, waited, self.timeout,
                    )  # fmt: skip
                    logged = time.monotonic()
                time.sleep(min(self.poll_seconds, max(self.timeout - waited, 0.0)))
        except BaseException:
            self._close()
            raise
        log.info("Holding the lease of ledger %s shard %s as %s", self.ledger.table, self.key, self.holder)
        if not self.advisory:
            self._stop.clear()
            self._heartbeat = threading.Thread(target=self._beat, name="kapture-lease-heartbeat", daemon=True)
            self._heartbeat.start()

    def release(self) -> None:
        """Give the lease back (its row deleted, its advisory lock released, its connection closed)."""
        if self._conn is None:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        try:
            with self._conn_lock, closing(self._conn.cursor()) as cur:
                self._begin(cur)
                cur.execute(f"DELETE FROM {self.table} WHERE lease_key = {self._p} AND token = {self._p}",
                            (self.key, self._token))  # fmt: skip
                self._end(cur, commit=True)
                if self.advisory:
                    self._unlock(cur, self._lock_name(self.key))
        finally:
            self._close()  # closing the session releases an advisory lock in any case

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- one attempt ----------------------------------------------------------------------------
    def _attempt(self) -> str | None:
        """Take the lease if nobody holds an overlapping one: None, else the holder waited for."""
        with self._conn_lock, closing(self._conn.cursor()) as cur:
            own = False
            try:
                self._begin(cur)
                if self.advisory:
                    own = self._try_lock(cur, self._lock_name(self.key))
                    if not own:
                        blocker = self._holder_text(cur, self.key)
                        self._end(cur, commit=False)
                        return blocker
                now = time_text(dt.datetime.now(dt.UTC))
                cur.execute(f"SELECT lease_key, shard_index, shard_count, holder, expires_at FROM {self.table}")
                stale: list[str] = []
                for key, index, count, holder, expires_at in [tuple(self._text(v) for v in r) for r in cur.fetchall()]:
                    if key != self.key and not shards_overlap(self.shard, (int(index), int(count))):
                        continue
                    if self._alive(cur, key, expires_at, now):
                        if own:
                            self._unlock(cur, self._lock_name(self.key))
                        self._end(cur, commit=False)
                        return str(holder)
                    stale.append(key)
                for key in stale:
                    cur.execute(f"DELETE FROM {self.table} WHERE lease_key = {self._p}", (key,))
                if stale:
                    log.info("Ledger %s: taking over expired leases of shards %s", self.ledger.table, stale)
                cur.execute(
                    f"INSERT INTO {self.table} (lease_key, shard_index, shard_count, holder, token, taken_at, "
                    f"expires_at) VALUES ({', '.join([self._p] * 7)})",
                    (self.key, *self.shard, str(self.holder)[:1000], self._token, now, self._expires_at()),
                )
                self._end(cur, commit=True)
                return None
            except BaseException:
                with suppress(Exception):  # what failed is raised; the session is closed by the caller
                    self._end(cur, commit=False)
                raise

    def _alive(self, cur: Any, key: str, expires_at: str | None, now: str) -> bool:
        """Whether the lease row of ``key`` still has a holder: its advisory lock is held, or it has not expired."""
        if not self.advisory:
            return expires_at is not None and expires_at > now
        if key == self.key:
            return False  # this run holds the shard's lock: the row is a killed run's
        name = self._lock_name(key)
        if self._engine == MYSQL:
            cur.execute("SELECT IS_USED_LOCK(%s)", (name,))
            return cur.fetchone()[0] is not None
        if self._try_lock(cur, name):
            self._unlock(cur, name)
            return False
        return True

    def _holder_text(self, cur: Any, key: str) -> str:
        cur.execute(f"SELECT holder FROM {self.table} WHERE lease_key = {self._p}", (key,))
        row = cur.fetchone()
        return str(self._text(row[0])) if row else f"another run (shard {key}; it has not written its name yet)"

    def _expires_at(self) -> str | None:
        if self.advisory:
            return None
        return time_text(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.expiry))

    def _beat(self) -> None:
        """SQLite and DuckDB: push the lease row's expiry on while the run lasts."""
        while not self._stop.wait(self.expiry / 4):
            try:
                with self._conn_lock, closing(self._conn.cursor()) as cur:
                    self._begin(cur)
                    cur.execute(
                        f"UPDATE {self.table} SET expires_at = {self._p} WHERE lease_key = {self._p} "
                        f"AND token = {self._p}",
                        (self._expires_at(), self.key, self._token),
                    )
                    lost = cur.rowcount == 0  # DuckDB does not count (-1)
                    self._end(cur, commit=True)
                if lost:
                    log.error("Ledger %s: the lease of shard %s expired, taken over", self.ledger.table, self.key)
            except Exception as err:  # the next beat tries again; the row expires only after several
                log.warning("Ledger %s: renewing the lease failed (%s); trying again", self.ledger.table, err)

    # -- per engine ----------------------------------------------------------------------------
    def _create_table(self) -> None:
        """Create ``<ledger>_lease`` if missing; sessions racing the one that creates it find it there."""
        with self._conn_lock, closing(self._conn.cursor()) as cur:
            if self.advisory and "." not in self.ledger.table:  # the lock names the table's schema
                cur.execute("SELECT DATABASE()" if self._engine == MYSQL else "SELECT current_schema()")
                self._namespace = str(self._text(cur.fetchone()[0]))
            try:
                self._begin(cur, registry=False)
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} (lease_key VARCHAR(32) NOT NULL PRIMARY KEY, "
                    "shard_index INTEGER NOT NULL, shard_count INTEGER NOT NULL, holder VARCHAR(1000) NOT NULL, "
                    "token VARCHAR(32) NOT NULL, taken_at VARCHAR(32) NOT NULL, expires_at VARCHAR(32))"
                )
                self._end(cur, commit=True, registry=False)
            except Exception:
                with suppress(Exception):  # the transaction may be over already (DuckDB ends it on a conflict)
                    self._end(cur, commit=False, registry=False)
                cur.execute(f"SELECT 1 FROM {self.table} WHERE 1 = 0")  # raises when it is really missing
                cur.fetchall()
                if self.advisory:
                    self._conn.commit()  # end the read

    def _begin(self, cur: Any, registry: bool = True) -> None:
        """Start a transaction; with ``registry``, one that no other lease attempt on this ledger runs beside."""
        if self._engine == SQLITE:
            cur.execute("BEGIN IMMEDIATE" if registry else "BEGIN")
        elif self._engine == DUCKDB:
            if registry:
                _DUCKDB_REGISTRY.acquire()
            cur.execute("BEGIN TRANSACTION")
        elif registry and self._engine == POSTGRES:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_pg_key(self._lock_name("registry")),))
        elif registry:
            cur.execute("SELECT GET_LOCK(%s, %s)", (self._lock_name("registry"), 60))
            if cur.fetchone()[0] != 1:
                raise LeaseTimeout(f"the lease table {self.table} stayed busy for 60 s")

    def _end(self, cur: Any, *, commit: bool, registry: bool = True) -> None:
        try:
            if self._engine in (SQLITE, DUCKDB):
                cur.execute("COMMIT" if commit else "ROLLBACK")
            elif commit:
                self._conn.commit()
            else:
                self._conn.rollback()
        finally:
            if registry and self._engine == DUCKDB:
                _DUCKDB_REGISTRY.release()
            elif registry and self._engine == MYSQL:
                cur.execute("SELECT RELEASE_LOCK(%s)", (self._lock_name("registry"),))
                cur.fetchall()

    def _lock_name(self, key: str) -> str:
        """The advisory lock of one lease: MySQL's names are server-wide and at most 64 characters."""
        digest = hashlib.blake2b(f"{self._namespace}.{self.ledger.table}:{key}".encode(), digest_size=16)
        return f"kapture_lease:{digest.hexdigest()}"

    def _try_lock(self, cur: Any, name: str) -> bool:
        if self._engine == MYSQL:
            cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
        else:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (_pg_key(name),))
        return bool(cur.fetchone()[0])

    def _unlock(self, cur: Any, name: str) -> None:
        if self._engine == MYSQL:
            cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
        else:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_pg_key(name),))
        cur.fetchall()

    def _text(self, value: Any) -> Any:
        return self.ledger.dialect.text(value)


def _pg_key(name: str) -> int:
    """PostgreSQL names an advisory lock by a 64-bit number: a stable hash of the lock's name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
