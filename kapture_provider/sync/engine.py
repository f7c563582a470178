"""The sync engine: many orders to Kapture with bounded concurrency, change detection and a ledger.

One run:

1. rows arrive in chunks; each is mapped and validated (an invalid row is recorded with its reason
   and never sent);
2. each chunk is compared with the ledger in one query per piece (a chunk of distinct orders is taken
   in growing pieces, so the first requests leave while the rest is mapped): same body hash as last
   delivered → ``unchanged``; a version older than the newest sent → ``stale``; anything else is sent;
3. a pool of ``max_concurrency`` sending threads (started as orders are queued) shares one hook, whose
   concurrency gate decides how many requests are in flight. Each thread takes the next order from a
   short queue, sends it and records the result in the ledger itself before it takes another, so a
   run killed at any point resends at most ``max_concurrency`` orders when it is run again, and no
   sending thread waits for the main thread (which reads, maps and decides the next orders meanwhile);
4. after the rows, orders that failed in earlier runs (of any interval) are resent from the body the
   ledger kept for them, unless this run already dealt with them. They are counted apart (``retried_*``):
   this run's own rows decide its failure ratio. An order Kapture refused ``park_after_refusals`` times
   in a row is *parked*: kept with its body and listed, but no longer retried until its row changes.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from kapture_provider.exceptions import KaptureError, KaptureRejectedError, KaptureSetupError
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.payload import (
    ORDER_ID_PATH,
    InvalidOrder,
    NullValues,
    OrderMapper,
    PreparedOrder,
    render_order_id,
)
from kapture_provider.sync.lease import Lease
from kapture_provider.sync.ledger import DELIVERED, INVALID, OWED, PARKED, Ledger, LedgerEntry, Outcome
from kapture_provider.sync.times import time_text
from kapture_provider.sync.versions import encode_version, is_older

log = logging.getLogger(__name__)
#: At most this many failed / invalid orders are listed in the summary; the ledger keeps them all.
MAX_LISTED = 1000


@dataclass
class SyncSummary:
    """What one run did. Order ids and reasons only: no personal data."""

    dry_run: bool = False
    rows_read: int = 0
    invalid: int = 0
    unchanged: int = 0
    stale: int = 0
    duplicates: int = 0
    to_send: int = 0
    succeeded: int = 0  # orders this run delivered (its own rows and owed ones)
    failed: int = 0  # orders this run was to send and did not deliver (its own rows, owed ones): now owed or parked
    refused: int = 0  # of the failed, those Kapture refused (parked ones included); the others were transient
    retried: int = 0  # owed orders (earlier runs' failures) resent by this run
    retried_delivered: int = 0
    retried_failed: int = 0
    parked: int = 0  # of the failed, those this run parked (refused too many times in a row)
    parked_unchanged: int = 0  # rows of parked orders, not sent again since they did not change
    still_owed: int = 0  # after this run, in the ledger (this shard's): owed orders, parked ones left out
    oldest_owed_since: str | None = None  # when the longest-failing owed order started failing (UTC)
    max_owed_attempts: int = 0
    parked_total: int = 0  # after this run, in the whole ledger
    requests: int = 0
    kapture_down: bool = False
    duration_seconds: float = 0.0
    orders_per_second: float = 0.0
    concurrency: int = 0  # requests in flight at most when the run ended (the adaptive limit it settled on)
    learned_rate_limit: float | None = None  # requests/s Kapture allowed, as learned from its 429s
    failed_orders: list[dict[str, str]] = field(default_factory=list)
    invalid_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def own_failed(self) -> int:
        """This run's own rows that were refused or not delivered (earlier failures retried left out)."""
        return self.failed - self.retried_failed

    @property
    def failure_ratio(self) -> float:
        """Of this run's own rows, the share refused, not delivered or invalid."""
        return (self.own_failed + self.invalid) / self.rows_read if self.rows_read else 0.0

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["failure_ratio"] = round(self.failure_ratio, 6)
        return result


class _Send(NamedTuple):
    order: PreparedOrder
    version: str | None
    refusals: int = 0  # Kapture's refusals of this order in a row so far
    owed: bool = False  # an earlier run's failure, resent from the ledger


def _unexpected(order_id: str, err: BaseException) -> RuntimeError:
    """A bug (not Kapture): stops the run, reported with the order it happened to."""
    failure = RuntimeError(f"order {order_id}: unexpected error")
    failure.__cause__ = err
    return failure


def _utc_now() -> str:
    return time_text(dt.datetime.now(dt.UTC))


@contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """Keep the objects that exist before the run (Airflow's, some 190,000) out of the garbage collector's
    full collections while it lasts: one full collection over them stops every sending thread for 100-180 ms.

    The objects the run creates are collected as usual. Undone at the end, unless objects were frozen
    before (an executor that froze its heap before forking this process keeps it so).
    """
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


class OrderSync:
    """Pushes prepared orders to Kapture, deciding per order with the ledger.

    :param hook: the shared hook (its connection pool should keep ``max_concurrency`` connections); its
        concurrency gate decides how many of the sending threads' requests are in flight.
    :param ledger: where outcomes are recorded; ``None`` disables change detection (every valid row is sent).
    :param max_concurrency: sending threads, the most requests in flight (default: the hook's ceiling).
    :param dry_run: decide and report, send and record nothing.
    :param progress_seconds: how often progress is logged.
    :param shard: ``(index, count)``: handle only the orders with ``shard_of(order_id, count) == index``.
    :param max_consecutive_transient: after this many orders in a row exhausted their retries on
        transient failures (Kapture down), stop sending: the remaining rows are still read, validated
        and recorded as owed with their bodies, so later runs deliver them; the task fails.
    :param park_after_refusals: park an order once Kapture refused it this many times in a row (transient
        failures do not count); ``None`` retries refused orders in every run until they land.
    :param lease: held while the run reads and writes the ledger, so that no other run of this ledger's
        shard sends at the same time; a dry run does not take it (it sends and records nothing).
    """

    def __init__(
        self,
        hook: KaptureHook,
        ledger: Ledger | None,
        *,
        max_concurrency: int | None = None,
        dry_run: bool = False,
        progress_seconds: float = 15.0,
        shard: tuple[int, int] | None = None,
        max_consecutive_transient: int = 32,
        park_after_refusals: int | None = None,
        lease: Lease | None = None,
    ):
        if max_concurrency is None:
            max_concurrency = hook.concurrency.limit.ceiling
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.hook = hook
        self.ledger = ledger
        self.max_concurrency = max_concurrency
        self.dry_run = dry_run
        self.progress_seconds = progress_seconds
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard index must be in [0, {shard[1]}), got {shard[0]}")
        self.shard = shard if shard and shard[1] > 1 else None
        self.max_consecutive_transient = max_consecutive_transient
        if park_after_refusals is not None and park_after_refusals < 1:
            raise ValueError("park_after_refusals must be at least 1 (or None: never park)")
        self.park_after_refusals = park_after_refusals
        self.lease = lease if not dry_run else None
        self.summary = SyncSummary(dry_run=dry_run)
        self._consecutive_transient = 0
        self._not_sent: list[Outcome] = []  # recorded as failed without a request once Kapture is down
        self._dry_run_ids: set[str] = set()  # failed orders a dry run counted as to send (it records nothing)
        # sending: the main thread queues orders, the pool's threads send and record them
        self._senders: ThreadPoolExecutor | None = None  # started by the first order to send
        self._room = threading.BoundedSemaphore(2 * max_concurrency)  # orders queued or being sent, at most
        self._lock = threading.Lock()  # guards the summary's counts and everything below
        self._in_progress: dict[str, Future[None]] = {}  # queued or being sent: not recorded yet
        self._stopping = False  # the sending threads take no new requests (the run failed)
        self._failure: BaseException | None = None  # what stopped a sending thread, raised by the main thread
        self._started = 0.0  # monotonic, set when run() starts
        self._started_at = _utc_now()
        self._done = threading.Event()  # set when the run ends: stops the progress reporter
        self._expected_rows: int | None = None
        self._rows_decided = 0  # rows sent, queued or settled, those of other shards included (as expected_rows)
        self._ledger_ready = False

    # -- public ----------------------------------------------------------------------------------
    def run(
        self,
        columns: Sequence[str],
        chunks: Iterable[Sequence[Sequence[Any]]],
        *,
        timezone: str = "UTC",
        version_column: str | None = None,
        row_mapper: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
        expected_rows: int | None = None,
        null_values: NullValues = "omit",
    ) -> SyncSummary:
        """Sync every row of ``chunks`` (rows shaped like ``columns``), then retry earlier failures.

        ``expected_rows``, when known, lets progress lines show how far the run is and an ETA;
        ``null_values`` is what a NULL column becomes (see :class:`~kapture_provider.payload.OrderMapper`).
        """
        self._expected_rows = expected_rows
        mapper = OrderMapper(columns, timezone=timezone, row_mapper=row_mapper, null_values=null_values)
        version_index = _column_index(columns, version_column)
        id_index = _order_id_index(columns)
        if self.shard and id_index is None:
            raise ValueError("sharding needs a column named 'order_id' or 'order_info.order_id'")
        self._prepare_ledger()
        with self.lease or nullcontext():
            self._started_at = _utc_now()  # orders failed before now are owed; those of a run waited for too
            self._started = time.monotonic()  # the timing leaves out the wait and what the operator did before
            with _older_objects_frozen():
                return self._sync_all(mapper, chunks, version_index, id_index)

    def _sync_all(
        self,
        mapper: OrderMapper,
        chunks: Iterable[Sequence[Sequence[Any]]],
        version_index: int | None,
        id_index: int | None,
    ) -> SyncSummary:
        requests_before = self.hook.requests_sent
        reporter = threading.Thread(target=self._report_progress, name="kapture-sync-progress", daemon=True)
        reporter.start()
        try:
            for chunk in chunks:
                self._sync_chunk(mapper, chunk, version_index, id_index)
            self._retry_owed()
            self._wait_until_done()
            self._flush_not_sent()
            self._summarise_owed()
        except BaseException:
            self._stopping = True  # queued orders are not sent; requests in flight finish and are recorded
            raise
        finally:
            if self._senders is not None:  # after a failure, queued orders are dropped unsent
                self._senders.shutdown(wait=True, cancel_futures=self._stopping)
            self._done.set()
            reporter.join()
            self.summary.requests = self.hook.requests_sent - requests_before
            self.summary.kapture_down = self.kapture_down
            self._summarise_concurrency()
            self._finish_timing()
        return self.summary

    # -- per chunk ------------------------------------------------------------------------------
    def _sync_chunk(
        self,
        mapper: OrderMapper,
        chunk: Sequence[Sequence[Any]],
        version_index: int | None,
        id_index: int | None,
    ) -> None:
        summary = self.summary
        fetched = len(chunk)
        if self.shard is not None:
            chunk = [row for row in chunk if self._in_shard(_best_effort_order_id(row, id_index))]
        self._rows_decided += fetched - len(chunk)  # other shards' rows: nothing to do here
        first_row = summary.rows_read + 1
        summary.rows_read += len(chunk)
        for start, piece in self._pieces(chunk, id_index):
            self._sync_piece(mapper, piece, first_row + start, version_index, id_index)
            self._rows_decided += len(piece)

    def _pieces(
        self, chunk: Sequence[Sequence[Any]], id_index: int | None
    ) -> Iterator[tuple[int, Sequence[Sequence[Any]]]]:
        """The chunk in growing pieces (``max_concurrency`` rows first) with their offsets, so that the first
        requests leave while the rest is mapped; whole when it holds several rows of one order (or rows
        without an order id column), which are resolved within a chunk."""
        ids = {_best_effort_order_id(row, id_index) for row in chunk} if id_index is not None else {None}
        if None in ids or len(ids) < len(chunk):
            yield 0, chunk
            return
        start, size = 0, self.max_concurrency
        while start < len(chunk):
            yield start, chunk[start : start + size]
            start, size = start + size, size * 4

    def _sync_piece(
        self,
        mapper: OrderMapper,
        rows: Sequence[Sequence[Any]],
        first_row: int,
        version_index: int | None,
        id_index: int | None,
    ) -> None:
        """Map, validate and decide these rows (numbered from ``first_row``), and queue those to send."""
        summary = self.summary
        candidates: list[_Send] = []
        rejected: list[tuple[int, str | None, str | None, str]] = []  # row number, order id, version, reason
        for offset, row in enumerate(rows):
            version = encode_version(row[version_index]) if version_index is not None else None
            try:
                candidates.append(_Send(mapper.prepare(row), version))
            except InvalidOrder as err:
                rejected.append((first_row + offset, _best_effort_order_id(row, id_index), version, str(err)))
        ids = [c.order.order_id for c in candidates] + [r[1] for r in rejected if r[1] is not None]
        known = self.ledger.lookup(ids) if self.ledger and self._ledger_ready else {}
        self._reject(rejected, known)
        seen_in_chunk: dict[str, _Send] = {}
        for candidate in candidates:
            order_id = candidate.order.order_id
            if order_id in seen_in_chunk:  # several rows of one order and no version column to pick one
                summary.duplicates += 1
            seen_in_chunk[order_id] = candidate
        for candidate in seen_in_chunk.values():
            entry = known.get(candidate.order.order_id)
            decision = _decide(candidate, entry)
            if decision == "unchanged":
                summary.unchanged += 1
            elif decision == "stale":
                summary.stale += 1
            elif decision == "parked":
                summary.parked_unchanged += 1
            else:
                if self.dry_run and entry is not None and entry.status == OWED:
                    self._dry_run_ids.add(candidate.order.order_id)  # only owed orders come back from the ledger
                refusals = entry.refusals if entry is not None and entry.status in (OWED, PARKED) else 0
                self._dispatch(_Send(candidate.order, candidate.version, refusals))

    @property
    def kapture_down(self) -> bool:
        """True once ``max_consecutive_transient`` orders in a row failed transiently: sending stopped."""
        return self._consecutive_transient >= self.max_consecutive_transient

    def _reject(
        self, rejected: Sequence[tuple[int, str | None, str | None, str]], known: Mapping[str, LedgerEntry]
    ) -> None:
        """Report invalid rows and record them, unless a newer version of the order was already sent."""
        invalid: list[Outcome] = []
        for row_number, order_id, version, reason in rejected:
            entry = known.get(order_id) if order_id is not None else None
            if entry is not None and is_older(version, entry.newest_version):
                self.summary.stale += 1  # an old, broken row in a backfill: newer data is already there
                continue
            self._note_invalid(row_number, order_id, reason)
            if order_id is not None:
                invalid.append(Outcome(order_id, INVALID, error=reason))
        self._record(invalid)

    def _retry_owed(self) -> None:
        if not self._ledger_ready or self.ledger is None or self.kapture_down:
            return
        self._wait_until_done()  # this run's own outcomes must be in the ledger first
        for owed in self.ledger.owed_bodies(attempted_before=self._started_at):
            if not self._in_shard(owed.order_id):
                continue
            if owed.order_id in self._dry_run_ids:  # the ledger cannot tell: a dry run records nothing
                continue
            self.summary.retried += 1
            order = PreparedOrder(owed.order_id, owed.data, owed.body_hash)
            self._dispatch(_Send(order, owed.version, owed.refusals, owed=True))

    # -- sending --------------------------------------------------------------------------------
    def _dispatch(self, item: _Send) -> None:
        """Queue an order for the sending threads (waits while the queue is full)."""
        order_id = item.order.order_id
        with self._lock:
            self.summary.to_send += 1
            if self.dry_run:
                return
            earlier = self._in_progress.get(order_id)
        if earlier is not None:
            wait([earlier])  # never two requests for one order at once
        self._raise_failure()
        self._room.acquire()
        if self._senders is None:  # threads start as orders come: none for a run with nothing to send
            self._senders = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="kapture-sync")
        future = self._senders.submit(self._send_queued, item)
        with self._lock:
            self._in_progress[order_id] = future
        future.add_done_callback(lambda done: self._done_with(order_id, done))

    def _done_with(self, order_id: str, future: Future[None]) -> None:
        with self._lock:
            if self._in_progress.get(order_id) is future:
                del self._in_progress[order_id]
        self._room.release()

    def _wait_until_done(self) -> None:
        """Wait until every queued order is sent and recorded."""
        with self._lock:
            queued = list(self._in_progress.values())
        wait(queued)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _send_queued(self, item: _Send) -> None:
        """In a sending thread: send a queued order and record its outcome."""
        try:
            if self._stopping:
                return  # never sent: the run failed (its rows are read again by the next run)
            if self.kapture_down:  # no request: recorded as failed, its body pending
                with self._lock:
                    self._hold(item)
                return
            outcome, refusal = self._send(item)
            self._record([outcome])
            with self._lock:
                self._count(outcome, item.owed)
                self._consecutive_transient = self._consecutive_transient + 1 if outcome.transient else 0
            if refusal is not None:
                raise refusal
        except BaseException as err:
            self._fail(err if isinstance(err, KaptureSetupError) else _unexpected(item.order.order_id, err))

    def _fail(self, failure: BaseException) -> None:
        """Stop the run: no more requests; the main thread raises ``failure``."""
        with self._lock:
            self._stopping = True
            if self._failure is None:
                self._failure = failure

    def _send(self, item: _Send) -> tuple[Outcome, KaptureSetupError | None]:
        """Send one order: its outcome, and the error that stops the run (credentials refused, TLS or proxy
        settings) if that was the answer."""
        order = item.order
        try:
            self.hook.post_order(order.data, order_id=order.order_id)
        except KaptureError as err:
            refusals = item.refusals + 1 if isinstance(err, KaptureRejectedError) else item.refusals
            status, error = OWED, err.message
            if self.park_after_refusals is not None and refusals >= self.park_after_refusals:
                status, error = PARKED, f"parked after {refusals} refusals in a row: {err.message}"
            failed = Outcome(
                order.order_id, status, order.body_hash, item.version, order.data, error, err.retryable, refusals
            )
            return failed, err if isinstance(err, KaptureSetupError) else None
        return Outcome(order.order_id, DELIVERED, order.body_hash, item.version), None

    def _hold(self, item: _Send) -> None:
        """Record an order as failed and pending without sending it, Kapture being down (lock held)."""
        order = item.order
        reason = f"not sent: Kapture unavailable ({self.max_consecutive_transient} orders in a row failed)"
        outcome = Outcome(order.order_id, OWED, order.body_hash, item.version, order.data, reason, True, item.refusals)
        self._count(outcome, item.owed)
        self._not_sent.append(outcome)
        if len(self._not_sent) >= 500:
            self._flush_not_sent()

    def _flush_not_sent(self) -> None:
        self._record(self._not_sent)
        self._not_sent = []

    def _record(self, outcomes: Sequence[Outcome]) -> None:
        """Commit outcomes to the ledger, unless there is none to write to (no ledger, or a dry run)."""
        if outcomes and not self.dry_run and self.ledger is not None and self._ledger_ready:
            self.ledger.record(outcomes, _utc_now())

    def _count(self, outcome: Outcome, owed: bool) -> None:
        summary = self.summary
        if outcome.status == DELIVERED:
            summary.succeeded += 1
            summary.retried_delivered += owed
            return
        summary.failed += 1
        summary.refused += not outcome.transient
        summary.retried_failed += owed
        summary.parked += outcome.status == PARKED
        if len(summary.failed_orders) < MAX_LISTED:
            summary.failed_orders.append(
                {"order_id": outcome.order_id, "status": outcome.status, "error": outcome.error or ""}
            )

    def _summarise_concurrency(self) -> None:
        """The concurrency the hook's controller settled on and the rate limit it learned, into the summary."""
        limit = self.hook.concurrency.limit
        self.summary.concurrency = min(limit.current, self.max_concurrency)
        ceiling = self.hook.throttle.ceiling
        self.summary.learned_rate_limit = round(ceiling, 1) if ceiling is not None else None
        if self._senders is not None:
            log.info(
                "Kapture concurrency at the end: %d requests in flight at most (%s, ceiling %d); %s",
                self.summary.concurrency, "fixed" if limit.fixed else "adaptive", self.max_concurrency,
                f"Kapture's rate limit learned: {ceiling:.1f} requests/s" if ceiling else "no rate limit met",
            )  # fmt: skip

    def _summarise_owed(self) -> None:
        """What the ledger still owes Kapture after this run: this shard's orders only, when sharded, so that
        one shard's stuck orders fail that shard alone (the one whose retry can resend them)."""
        if self.ledger is None or not self._ledger_ready:
            return
        owed = self.ledger.owed_summary(self._in_shard if self.shard is not None else None)
        self.summary.still_owed, self.summary.oldest_owed_since = owed.owed, owed.oldest_failing_since
        self.summary.max_owed_attempts, self.summary.parked_total = owed.max_attempts, owed.parked

    def _note_invalid(self, row_number: int, order_id: str | None, reason: str) -> None:
        self.summary.invalid += 1
        if len(self.summary.invalid_rows) < MAX_LISTED:
            self.summary.invalid_rows.append({"row": row_number, "order_id": order_id, "error": reason})

    def _in_shard(self, order_id: str | None) -> bool:
        return in_shard(order_id, self.shard)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _prepare_ledger(self) -> None:
        if self.ledger is None:
            return
        if self.dry_run:
            self._ledger_ready = self.ledger.exists()
        else:
            self.ledger.create()
            self._ledger_ready = True

    def _finish_timing(self) -> None:
        elapsed = time.monotonic() - self._started
        self.summary.duration_seconds = round(elapsed, 3)
        sent = self.summary.succeeded + self.summary.failed
        self.summary.orders_per_second = round(sent / elapsed, 1) if elapsed > 0 else 0.0

    def _report_progress(self) -> None:
        """Log a progress line every ``progress_seconds`` until the run ends (the operator logs the summary)."""
        while not self._done.wait(self.progress_seconds):
            s = self.summary
            sent, elapsed = s.succeeded + s.failed, max(time.monotonic() - self._started, 1e-9)
            log.info(
                "Kapture sync progress: %d rows read%s, %d sent (%d ok, %d failed), %d unchanged, %d stale, "
                "%d invalid, %.1f orders/s",
                s.rows_read, self._eta(elapsed), sent, s.succeeded, s.failed, s.unchanged, s.stale, s.invalid,
                sent / elapsed,
            )  # fmt: skip

    def _eta(self, elapsed: float) -> str:
        """`` of N (x%), ETA …`` when the number of rows is known; a row counts as done once settled (unchanged,
        stale, invalid, another shard's) or sent and recorded."""
        if not self._expected_rows:
            return ""
        with self._lock:
            done = max(self._rows_decided - len(self._in_progress), 0)  # owed retries are outstanding, not rows
        share = min(done / self._expected_rows, 1.0)
        eta = f", ETA {elapsed * (1 - share) / share:.0f} s" if share > 0 else ""
        return f" of {self._expected_rows} ({share:.0%}){eta}"


def shard_of(order_id: str, count: int) -> int:
    """The shard of an order id: a stable hash (CRC-32 of its text) modulo ``count``."""
    return zlib.crc32(order_id.encode("utf-8")) % count


def in_shard(order_id: str | None, shard: tuple[int, int] | None) -> bool:
    """Whether shard ``(index, count)`` (None: the only one) handles this order; rows without a usable order id
    go to shard 0, so that they are reported exactly once."""
    if shard is None:
        return True
    index, count = shard
    return (shard_of(order_id, count) if order_id is not None else 0) == index


def _decide(candidate: _Send, entry: LedgerEntry | None) -> str:
    if entry is None:
        return "send"
    if is_older(candidate.version, entry.newest_version):
        return "stale"
    if entry.status not in (OWED, PARKED) and entry.body_hash == candidate.order.body_hash:
        return "unchanged"  # what Kapture last received (a later invalid row changed nothing there)
    if entry.status == PARKED and entry.pending_hash == candidate.order.body_hash:
        return "parked"  # refused too often as it is: sent again once its row changes
    return "send"


def _column_index(columns: Sequence[str], name: str | None) -> int | None:
    if name is None:
        return None
    if name not in columns:
        raise ValueError(f"version_column {name!r} is not among the query's columns {list(columns)}")
    return list(columns).index(name)


def _order_id_index(columns: Sequence[str]) -> int | None:
    for index, name in enumerate(columns):
        if name in ("order_id", ORDER_ID_PATH):
            return index
    return None


def _best_effort_order_id(row: Sequence[Any], id_index: int | None) -> str | None:
    if id_index is None:
        return None
    try:
        return render_order_id(row[id_index])
    except InvalidOrder:
        return None
