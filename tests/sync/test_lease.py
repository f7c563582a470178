"""Overlapping runs on a SQLite or DuckDB ledger: a lease row with an expiry (the cases: ``lease_cases.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from lease_cases import (  # noqa: F401 - the tests (and their fixture) run here, on these engines
    slow_kapture,
    test_a_dry_run_does_not_wait_for_the_lease,
    test_a_killed_holders_lease_is_taken_over,
    test_a_run_waiting_past_lease_timeout_fails_naming_the_holder,
    test_shards_of_one_count_do_not_wait_for_each_other_but_a_whole_run_waits_for_them,
    test_the_hourly_sync_and_the_full_diff_started_together_send_every_order_once,
    test_two_runs_started_together_send_every_order_once,
)

from kapture_provider.sync.lease import shards_overlap

pytestmark = pytest.mark.unit


@pytest.fixture(params=["sqlite", "duckdb"])
def ledger_db(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_warehouse")


@pytest.mark.parametrize(
    ("one", "other", "overlap"),
    [((0, 1), (3, 4), True), ((1, 4), (1, 4), True), ((1, 4), (2, 4), False), ((2, 8), (2, 4), True),
     ((3, 8), (2, 4), False), ((1, 3), (2, 4), True)],
)  # fmt: skip
def test_shards_overlap_when_an_order_can_fall_in_both(
    one: tuple[int, int], other: tuple[int, int], overlap: bool
) -> None:
    assert shards_overlap(one, other) is overlap
    assert shards_overlap(other, one) is overlap
