"""When a sync run fails: its own rows decide, orders owed from earlier runs only past their own limits.

Hourly runs of a DAG like the example (``dag.test()``, no Airflow retries) against the emulator, which
refuses chosen orders (``script_for_order``); the ledger is SQLite.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

from test_interval_dag import order_row
from test_order_sync import DAY, HOUR, TASK_ID, sync_dag

from kapture_provider.compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_1_PLUS
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, Fault, KaptureEmulator

STUCK, FINE = "00000001", "00000002"


def requests_for(emulator: KaptureEmulator) -> Counter[str]:
    return Counter(r.order_id for r in emulator.requests if r.path == ADD_UPDATE_PATH)


def at(hour: int, minutes: int = 10) -> dt.datetime:
    return DAY + hour * HOUR + dt.timedelta(minutes=minutes)


def test_a_refused_order_fails_its_own_run_once_then_is_retried_quietly_and_parked(
    sqlite_warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag
) -> None:
    kapture_conn.script_for_order(STUCK, *[Fault.FAILED_BODY] * 3)  # refused three times, then accepted
    sqlite_warehouse.insert_orders([order_row(STUCK, at(1)), order_row(FINE, at(1, 20))])
    dag = sync_dag(example_dag)  # the operator's defaults: no own failure tolerated, park after 3 refusals

    own = run_dag(dag, DAY + 2 * HOUR)  # [01:00, 02:00): the refused order is one of this run's rows
    quiet = [run_dag(dag, DAY + hour * HOUR) for hour in (3, 4, 5)]  # no rows of their own

    assert own.task_states[TASK_ID] == "failed"
    assert own.xcom(TASK_ID)["failed_orders"][0]["order_id"] == STUCK
    assert [run.state for run in quiet] == ["success"] * 3
    retried, parked, after = (run.xcom(TASK_ID) for run in quiet)
    assert {k: retried[k] for k in ("rows_read", "retried", "retried_failed", "failed", "still_owed")} == {
        "rows_read": 0, "retried": 1, "retried_failed": 1, "failed": 1, "still_owed": 1,
    }  # fmt: skip
    assert retried["max_owed_attempts"] == 2 and retried["oldest_owed_since"] is not None
    assert (parked["parked"], parked["still_owed"], parked["parked_total"]) == (1, 0, 1)
    assert parked["failed_orders"][0]["status"] == "parked"
    assert parked["failed_orders"][0]["error"].startswith("parked after 3 refusals in a row: order 00000001")
    assert (after["retried"], after["requests"], after["parked_total"]) == (0, 0, 1)  # parked: not retried
    assert requests_for(kapture_conn) == Counter({STUCK: 3, FINE: 1})
    entry = sqlite_warehouse.ledger()[STUCK]
    assert (entry["status"], entry["refusals"], entry["attempts"]) == ("parked", 3, 3)
    assert entry["pending_body"] is not None  # kept: nothing is dropped

    sqlite_warehouse.insert_orders([order_row(STUCK, at(6), name="Meera Iyer-Rao")])  # the row is fixed
    fixed = run_dag(dag, DAY + 7 * HOUR)

    assert fixed.state == "success"
    assert fixed.xcom(TASK_ID)["succeeded"] == 1
    assert kapture_conn.orders[STUCK]["customer_info"]["customer_name"] == "Meera Iyer-Rao"
    entry = sqlite_warehouse.ledger()[STUCK]
    assert (entry["status"], entry["refusals"], entry["pending_body"], entry["failing_since"]) == (
        "delivered", 0, None, None,
    )  # fmt: skip


def test_a_row_of_a_parked_order_that_did_not_change_is_not_sent_again(
    sqlite_warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag
) -> None:
    kapture_conn.script_for_order(STUCK, Fault.FAILED_BODY)
    sqlite_warehouse.insert_orders([order_row(STUCK, at(1))])
    dag = sync_dag(example_dag, park_after_refusals=1, failure_floor=1)

    first = run_dag(dag, DAY + 2 * HOUR)
    assert (first.state, first.xcom(TASK_ID)["parked"]) == ("success", 1)
    again = run_dag(dag, DAY + 2 * HOUR)  # the same interval: the same row

    assert again.state == "success"
    assert (again.xcom(TASK_ID)["parked_unchanged"], again.xcom(TASK_ID)["requests"]) == (1, 0)


def test_a_parked_order_whose_row_goes_back_to_what_kapture_holds_is_sent_once_and_unparked(
    sqlite_warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag
) -> None:
    dag = sync_dag(example_dag, park_after_refusals=1, failure_floor=1)
    sqlite_warehouse.insert_orders([order_row(STUCK, at(1))])
    assert run_dag(dag, DAY + 2 * HOUR).xcom(TASK_ID)["succeeded"] == 1
    kapture_conn.script_for_order(STUCK, Fault.FAILED_BODY)
    sqlite_warehouse.insert_orders([order_row(STUCK, at(2), name="Meera Iyer-Rao")])
    assert run_dag(dag, DAY + 3 * HOUR).xcom(TASK_ID)["parked"] == 1

    sqlite_warehouse.insert_orders([order_row(STUCK, at(3))])  # the change is undone: the delivered body again
    reverted = run_dag(dag, DAY + 4 * HOUR)

    assert reverted.state == "success"
    assert (reverted.xcom(TASK_ID)["succeeded"], reverted.xcom(TASK_ID)["parked_total"]) == (1, 0)
    assert requests_for(kapture_conn) == Counter({STUCK: 3})
    entry = sqlite_warehouse.ledger()[STUCK]
    assert (entry["status"], entry["refusals"], entry["pending_body"]) == ("delivered", 0, None)


def test_the_failure_floor_lets_one_refused_order_of_one_pass(
    sqlite_warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag
) -> None:
    """1 of 1 is 100%: with a floor of 1 the run passes, lists the order and keeps it owed."""
    kapture_conn.script_for_order(STUCK, Fault.FAILED_BODY)
    sqlite_warehouse.insert_orders([order_row(STUCK, at(1))])

    outcome = run_dag(sync_dag(example_dag, max_failed_ratio=0.01, failure_floor=1), DAY + 2 * HOUR)

    assert outcome.state == "success", outcome.task_states
    summary = outcome.xcom(TASK_ID)
    assert (summary["failed"], summary["failure_ratio"], summary["still_owed"]) == (1, 1.0, 1)
    assert sqlite_warehouse.ledger()[STUCK]["status"] == "failed"


def test_owed_orders_past_their_limits_fail_the_run(
    sqlite_warehouse, kapture_conn: KaptureEmulator, example_dag, run_dag, capfd
) -> None:
    for order_id in (STUCK, FINE):
        kapture_conn.script_for_order(order_id, *[Fault.FAILED_BODY] * 3)
    sqlite_warehouse.insert_orders([order_row(STUCK, at(1)), order_row(FINE, at(1, 20))])
    tolerant = {"failure_floor": 2, "park_after_refusals": None}
    assert run_dag(sync_dag(example_dag, **tolerant), DAY + 2 * HOUR).state == "success"  # 2 owed now

    too_many = run_dag(sync_dag(example_dag, max_owed_orders=1, **tolerant), DAY + 3 * HOUR)
    too_old = run_dag(sync_dag(example_dag, max_owed_age=dt.timedelta(0), **tolerant), DAY + 4 * HOUR)

    assert too_many.task_states[TASK_ID] == too_old.task_states[TASK_ID] == "failed"
    assert too_many.xcom(TASK_ID)["still_owed"] == 2
    if AIRFLOW_V_3_0_PLUS and not AIRFLOW_V_3_1_PLUS:
        return  # 3.0's dag.test() draws the failure for a terminal only; the messages are checked on the others
    output = capfd.readouterr().out
    assert "2 orders still owed to Kapture (> max_owed_orders 1)" in output
    assert "has been failing since" in output and "(> max_owed_age 0:00:00)" in output


def test_transient_failures_never_park_an_order(
    sqlite_warehouse, kapture_fast_conn: KaptureEmulator, example_dag, run_dag
) -> None:
    """Kapture overloaded (503 on every try of every run) is not a refusal: the order stays owed."""
    kapture_fast_conn.script_for_order(STUCK, *[Fault.HTTP_503] * 9)  # 3 runs x (1 try + 2 retries)
    sqlite_warehouse.insert_orders([order_row(STUCK, at(1))])
    dag = sync_dag(example_dag, park_after_refusals=1, failure_floor=1)

    runs = [run_dag(dag, DAY + hour * HOUR) for hour in (2, 3, 4)]
    delivered = run_dag(dag, DAY + 5 * HOUR)

    assert [r.state for r in runs] == ["success"] * 3
    assert [r.xcom(TASK_ID)["parked"] for r in runs] == [0, 0, 0]
    assert delivered.xcom(TASK_ID)["retried_delivered"] == 1
    assert sqlite_warehouse.ledger()[STUCK]["status"] == "delivered"
