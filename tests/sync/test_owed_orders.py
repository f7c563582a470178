"""The Kapture page's read of the orders still owed to Kapture (``kapture_provider.ui.owed``), on real ledgers.

The ledger is written by the sync engine's own :class:`Ledger`; the page reads it back on SQLite and
PostgreSQL, with and without the ``failing_since`` column (ledgers written before it existed lack it).
"""

from __future__ import annotations

from typing import Any

from kapture_provider.compat import BaseHook
from kapture_provider.sync.ledger import DELIVERED, FAILED, INVALID, Ledger, Outcome
from kapture_provider.ui.owed import owed_orders

TABLE = "kapture_order_sync_ledger"
T1, T2, T3 = "2026-11-26T01:10:00.000000Z", "2026-11-26T02:10:00.000000Z", "2026-11-26T03:10:00.000000Z"
BODY = b'{"customer_info": {"customer_name": "Quintessa Zorawar", "phone": "9012345601"}}'


def hook() -> Any:
    return BaseHook.get_connection("erp_warehouse").get_hook()  # what the warehouse fixtures point at


def write_ledger() -> None:
    """A delivered order, one refused twice, one refused once, one delivered then refused, one invalid row."""
    ledger = Ledger(hook(), TABLE)
    ledger.create()
    ledger.record([Outcome("A", DELIVERED, "h1", "n:1")], T1)
    ledger.record([Outcome("B", FAILED, "h2", "n:1", BODY, "order B: Kapture refused the order")], T1)
    ledger.record([Outcome("C", FAILED, "h3", "n:1", BODY, "order C: Kapture refused the order")], T2)
    ledger.record([Outcome("D", INVALID, error="row 4: customer_name is empty")], T2)
    ledger.record([Outcome("B", FAILED, "h2", "n:1", BODY, "order B: Kapture refused the order again")], T3)
    ledger.record([Outcome("A", FAILED, "h4", "n:2", BODY, "order A: Kapture refused the order")], T3)
    ledger.close()


def columns(warehouse: Any) -> set[str]:
    if warehouse.kind == "sqlite":
        return {row[1] for row in warehouse.query(f"PRAGMA table_info({TABLE})")}
    rows = warehouse.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (warehouse.schema, TABLE),
    )
    return {row[0] for row in rows}


def test_owed_orders_are_the_failed_ones_known_longest_first(warehouse: Any) -> None:
    write_ledger()
    if "failing_since" in columns(warehouse):  # read it as a ledger written before the column existed
        warehouse.execute(f"ALTER TABLE {TABLE} DROP COLUMN failing_since")

    owed = owed_orders(hook(), TABLE, limit=2)

    assert owed.total == 3  # A, B and C; the invalid row D is not owed to Kapture: the warehouse must fix it
    a, b = owed.orders  # first seen at T1, both; the limit leaves C out
    assert (a.order_id, a.attempts, a.last_failure, a.last_error) == ("A", 2, T3, "order A: Kapture refused the order")
    assert a.first_failure is None  # delivered once: when it started failing is not in an old ledger
    assert (b.order_id, b.attempts, b.first_failure, b.last_failure) == ("B", 2, T1, T3)
    assert b.last_error == "order B: Kapture refused the order again"
    assert "Quintessa" not in repr(owed) and "9012345601" not in repr(owed)  # pending bodies are never read


def test_owed_orders_read_failing_since_when_the_ledger_has_it(warehouse: Any) -> None:
    write_ledger()
    if "failing_since" not in columns(warehouse):
        warehouse.execute(f"ALTER TABLE {TABLE} ADD COLUMN failing_since VARCHAR(32)")
    placeholder = warehouse.placeholder
    warehouse.execute(f"UPDATE {TABLE} SET failing_since = {placeholder} WHERE order_id = 'A'", (T3,))

    (a,) = owed_orders(hook(), TABLE, limit=1).orders

    assert (a.order_id, a.first_failure) == ("A", T3)


def test_no_owed_orders(warehouse: Any) -> None:
    ledger = Ledger(hook(), TABLE)
    ledger.create()
    ledger.record([Outcome("A", DELIVERED, "h1", "n:1")], T1)
    ledger.close()

    owed = owed_orders(hook(), TABLE)

    assert (owed.total, owed.orders) == (0, [])
