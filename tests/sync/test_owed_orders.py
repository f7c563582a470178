"""What the ledger still owes Kapture (``Ledger.owed_summary`` and ``Ledger.owed_orders``), on every engine.

The ledger is written by its own ``record``, as the sync engine writes it; the Kapture page and the
operator's failure policy read it back through these two methods.
"""

from __future__ import annotations

from typing import Any

from kapture_provider.compat import BaseHook
from kapture_provider.sync.ledger import DELIVERED, INVALID, OWED, PARKED, Ledger, Outcome, OwedSummary

TABLE = "kapture_order_sync_ledger"
T1, T2, T3 = "2026-11-26T01:10:00.000000Z", "2026-11-26T02:10:00.000000Z", "2026-11-26T03:10:00.000000Z"
BODY = b'{"customer_info": {"customer_name": "Quintessa Zorawar", "phone": "9012345601"}}'


def ledger() -> Ledger:
    return Ledger(BaseHook.get_connection("erp_warehouse").get_hook(), TABLE)  # what the fixtures point at


def refused(order_id: str, refusals: int, status: str = OWED) -> Outcome:
    error = f"order {order_id}: Kapture refused the order ({refusals})"
    return Outcome(order_id, status, f"h-{order_id}", "n:1", BODY, error, refusals=refusals)


def test_owed_and_parked_orders_failing_longest_first(any_warehouse: Any) -> None:
    """A delivered, then refused; B refused twice; C refused once; D invalid; E parked; F delivered."""
    book = ledger()
    book.create()
    book.record([Outcome("A", DELIVERED, "h1", "n:1"), refused("B", 1), Outcome("F", DELIVERED, "h6", "n:1")], T1)
    book.record([refused("C", 1), Outcome("D", INVALID, error="row 4: customer_name is empty")], T2)
    book.record([refused("B", 2), refused("A", 1), refused("E", 3, PARKED)], T3)

    summary, orders = book.owed_summary(), book.owed_orders(limit=3)
    one_shard = book.owed_summary(in_scope=lambda order_id: order_id in ("C", "D", "E", "F"))
    book.close()

    assert summary == OwedSummary(owed=3, oldest_failing_since=T1, max_attempts=2, parked=1)  # A, B, C; E
    assert one_shard == OwedSummary(owed=1, oldest_failing_since=T2, max_attempts=1, parked=1)  # C; E
    assert [(o.order_id, o.status, o.attempts, o.refusals, o.failing_since, o.last_attempt_at) for o in orders] == [
        ("B", OWED, 2, 2, T1, T3),  # failing since its first refusal, not since its last
        ("C", OWED, 1, 1, T2, T2),
        ("A", OWED, 2, 1, T3, T3),  # delivered at T1: failing only since T3
    ]  # E (also failing since T3) is left out by the limit; D is the warehouse's to fix, F is delivered
    assert orders[0].last_error == "order B: Kapture refused the order (2)"
    assert "Quintessa" not in repr(orders) and "9012345601" not in repr(orders)  # never the pending body


def test_delivery_clears_what_was_owed(any_warehouse: Any) -> None:
    book = ledger()
    book.create()
    book.record([refused("A", 1), refused("B", 3, PARKED)], T1)
    book.record([Outcome("A", DELIVERED, "h1", "n:1"), Outcome("B", DELIVERED, "h2", "n:2")], T2)

    summary, orders = book.owed_summary(), book.owed_orders()
    (entry,) = book.lookup(["B"]).values()
    book.close()

    assert (summary, orders) == (OwedSummary(), [])
    assert (entry.status, entry.refusals) == (DELIVERED, 0)
