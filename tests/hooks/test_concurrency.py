"""The adaptive concurrency limit, fed with simulated answers and a simulated clock (no server, no sleeping),
and the gate that applies it across threads."""

from __future__ import annotations

import threading

import pytest

from kapture_provider.hooks.concurrency import (
    INITIAL,
    TOLERANCE,
    ConcurrencyGate,
    ConcurrencyLimit,
)

pytestmark = pytest.mark.unit

TICK = 0.005  # simulated seconds per step


class SimulatedKapture:
    """A server answering after ``base`` seconds, serving at most ``capacity`` requests/s (beyond that the
    requests queue: the round trip becomes in-flight / capacity), answering 429 above ``rate_limit``."""

    def __init__(self, base: float, capacity: float = float("inf"), rate_limit: float | None = None):
        self.base, self.capacity, self.rate_limit = base, capacity, rate_limit
        self.now = 0.0
        self.answered = 0
        self.throttled = 0
        self._owed = 0.0  # answers due but not yet delivered (fractions of one)
        self._allowed = 0.0  # of them, those the rate limit lets through

    def run(self, limit: ConcurrencyLimit, seconds: float) -> list[int]:
        """Keep ``limit.current`` requests in flight for ``seconds``; the limit after each step."""
        limits = []
        for _ in range(round(seconds / TICK)):
            in_flight = limit.current
            round_trip = max(self.base, in_flight / self.capacity)
            self._owed += in_flight / round_trip * TICK
            self.now += TICK
            while self._owed >= 1:
                self._owed -= 1
                offered = in_flight / round_trip
                self._allowed += 1 if self.rate_limit is None else min(1.0, self.rate_limit / offered)
                accepted = self._allowed >= 1
                self._allowed -= accepted
                status = 200 if accepted else 429
                self.answered += accepted
                self.throttled += not accepted
                limit.on_answer(status, round_trip, self.now)
            limits.append(limit.current)
        return limits


def test_grows_to_the_ceiling_while_the_round_trip_stays_at_its_floor() -> None:
    limit = ConcurrencyLimit(64)
    limits = SimulatedKapture(base=0.05).run(limit, 10)

    assert limits[0] == INITIAL
    assert limits[-1] == 64
    assert limits == sorted(limits)  # never shrank: nothing queued


def test_settles_where_kapture_starts_queueing_and_keeps_its_throughput() -> None:
    """Kapture serves 400 requests/s: beyond 20 in flight (400/s × 50 ms) requests only queue."""
    kapture = SimulatedKapture(base=0.05, capacity=400)
    limit = ConcurrencyLimit(256)
    kapture.run(limit, 10)
    limits = kapture.run(limit, 20)

    settled = sorted(limits)[len(limits) // 2]
    assert min(limits) >= 20  # throughput never falls below Kapture's capacity (20 / 50 ms = 400/s)
    assert settled <= TOLERANCE * 20 * 1.5  # and the queue stays short: far from the ceiling of 256
    assert max(limits) < 256


def test_a_slower_kapture_is_accepted_as_the_new_floor() -> None:
    """Kapture slows from 50 to 300 ms for good, without queueing: the limit dips, then is back at the ceiling."""
    kapture = SimulatedKapture(base=0.05)
    limit = ConcurrencyLimit(64)
    kapture.run(limit, 5)
    assert limit.current == 64

    kapture.base = 0.3
    limits = kapture.run(limit, 15)

    assert min(limits) < 64  # it reacted to the slower answers…
    assert min(limits) > 1  # …without collapsing
    assert limits[-1] == 64  # and found that more in flight still brings more throughput
    assert limit.floor == pytest.approx(0.3)


def test_a_faster_kapture_lowers_the_floor_at_once() -> None:
    kapture = SimulatedKapture(base=0.3)
    limit = ConcurrencyLimit(64)
    kapture.run(limit, 5)
    kapture.base = 0.05
    kapture.run(limit, 1)

    assert limit.floor == pytest.approx(0.05)


def test_throttle_answers_cut_the_limit_once_per_window() -> None:
    limit = ConcurrencyLimit(64, initial=40)
    for n in range(20):  # one burst of 429s within a window
        limit.on_answer(429, 0.05, 0.001 * n)

    assert limit.current == 36  # 40 × 0.9, once


def test_a_rate_limit_stops_the_growth() -> None:
    """Kapture answers 429 above 200 requests/s: the limit stays around 200/s × 50 ms = 10 in flight."""
    kapture = SimulatedKapture(base=0.05, rate_limit=200)
    limit = ConcurrencyLimit(64)
    limits = kapture.run(limit, 20)

    assert max(limits[len(limits) // 2 :]) <= 2 * 10
    assert kapture.throttled < 0.2 * (kapture.answered + kapture.throttled)


def test_no_growth_while_fewer_than_half_the_limit_are_in_flight() -> None:
    limit = ConcurrencyLimit(64, initial=16)
    for n in range(1000):
        limit.on_answer(200, 0.05, 0.01 * n)  # the sender has little to send: 5 in flight

    assert limit.current == 16


def test_network_failures_and_server_errors_say_nothing() -> None:
    limit = ConcurrencyLimit(64, initial=16)
    for n in range(1000):
        limit.on_answer(None if n % 2 else 502, 30.0, 0.01 * n)

    assert limit.current == 16
    assert limit.floor is None


def test_a_fixed_limit_never_moves() -> None:
    limit = ConcurrencyLimit(16, fixed=True)
    SimulatedKapture(base=0.05, capacity=100).run(limit, 5)
    for n in range(10):
        limit.on_answer(429, 0.05, 10 + n)

    assert limit.current == 16
    assert limit.history == []


def test_the_ceiling_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyLimit(0)


def test_the_gate_admits_no_more_than_the_limit_across_threads() -> None:
    gate = ConcurrencyGate(ConcurrencyLimit(3, fixed=True))
    lock, most = threading.Lock(), [0]
    inside = threading.Barrier(3)  # the first three get in together; the others wait for a release

    def request(n: int) -> None:
        gate.acquire()
        with lock:
            most[0] = max(most[0], gate.in_flight)
        if n < 3:
            inside.wait(timeout=30)
        gate.release(200, 0.01)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert most[0] == 3
    assert gate.in_flight == 0


def test_a_small_ceiling_is_where_the_limit_starts() -> None:
    """``max_concurrency=16`` set by hand starts at 16, as a fixed 16 did; the default ceiling starts low."""
    assert ConcurrencyLimit(16).current == 16
    assert ConcurrencyLimit(64).current == INITIAL
    assert ConcurrencyLimit(3).current == 3
