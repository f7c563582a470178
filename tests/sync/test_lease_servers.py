"""Overlapping runs on a PostgreSQL or MariaDB ledger: an advisory lock (the cases: ``lease_cases.py``)."""

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

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgres", "mariadb"])
def ledger_db(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_warehouse")
