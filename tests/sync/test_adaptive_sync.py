"""A sync with the default, adaptive concurrency against an emulator that rate-limits without saying so:
every order arrives once, and the limit is learned from the first 429s instead of hit again and again."""

from __future__ import annotations

import pytest

from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.sync.engine import OrderSync
from kapture_provider.testing.emulator import KaptureEmulator

pytestmark = pytest.mark.unit

ORDERS = 600
RATE_LIMIT = 100.0


def test_a_rate_limited_sync_delivers_every_order_once_with_few_429s(kapture_conn: KaptureEmulator) -> None:
    kapture_conn.configure(latency=0.02, rate_limit=RATE_LIMIT, retry_after=1)
    rows = [(f"A-{n}", f"Customer {n}") for n in range(ORDERS)]
    hook = KaptureHook()
    try:
        summary = OrderSync(hook, None).run(["order_id", "customer_name"], [rows])
    finally:
        hook.close()

    stats = kapture_conn.stats()
    assert summary.succeeded == ORDERS and summary.failed == 0
    assert stats["orders"] == ORDERS and stats["stored"] == ORDERS  # each order stored exactly once
    assert stats["requests"] == ORDERS + stats["rate_limited"]  # every other request was a 429, retried
    assert stats["rate_limited"] <= 0.1 * stats["requests"]
    assert summary.learned_rate_limit is not None and summary.learned_rate_limit <= RATE_LIMIT
    assert 1 <= summary.concurrency <= 64


def test_a_fixed_concurrency_stays_fixed(kapture_conn: KaptureEmulator) -> None:
    kapture_conn.configure(latency=0.01)
    rows = [(f"F-{n}", f"Customer {n}") for n in range(50)]
    hook = KaptureHook(concurrency=5)
    try:
        summary = OrderSync(hook, None).run(["order_id", "customer_name"], [rows])
    finally:
        hook.close()

    assert summary.succeeded == 50 and kapture_conn.stats()["stored"] == 50
    assert summary.concurrency == 5
    assert hook.concurrency.limit.history == []
