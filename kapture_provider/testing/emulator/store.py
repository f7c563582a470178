"""The emulator's order store: Kapture's upsert keyed by ``order_info.order_id``, and its stable ids.

A customer is known by name and phone or email, a contact by phone or email, an enquiry by order id,
so that sending an order again gives back the ids Kapture gave it. Not locked: its caller holds a lock.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass
from typing import Any

CUSTOMER_ID_START, ENQUIRY_ID_START, CONTACT_ID_START = 191696570, 24284719, 210006001


def success_payload(customer_id: int, enquiry_id: int, contact_id: int) -> dict[str, Any]:
    """Kapture's answer to a stored order."""
    return {
        "status": "success",
        "message": "Order Updated successfully !",
        "Order": {
            "result": True,
            "customer_id": customer_id,
            "enquiry_id": enquiry_id,
            "action": "ORDER",
            "action_event": "ORDER_FIELD_UPDATION",
            "contact_id": contact_id,
        },
    }


@dataclass(frozen=True, slots=True)
class StoredOrder:
    body: Any
    customer_id: int
    enquiry_id: int
    contact_id: int
    updates: int


def text(value: Any) -> str:
    """A string field stripped, or "" when it is not a string."""
    return value.strip() if isinstance(value, str) else ""


def order_id_of(document: Any) -> str | None:
    """``order_info.order_id`` as the store key, or None when absent, empty or not a string or number."""
    info = document.get("order_info") if isinstance(document, dict) else None
    value = info.get("order_id") if isinstance(info, dict) else None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def merge_sections(stored: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """An update changes the fields it carries; fields it leaves out keep their stored values.

    Object sections (``customer_info``, ``order_info``…) merge field by field; ``contact_info``
    (a list) and any other value is replaced whole.
    """
    merged = dict(stored)
    for section, value in update.items():
        old = merged.get(section)
        merged[section] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


class OrderStore:
    """Orders by id, with the customer, contact and enquiry ids Kapture would give them."""

    def __init__(self) -> None:
        self._orders: dict[str, StoredOrder] = {}
        self._customer_ids: dict[tuple[str, str, str], int] = {}
        self._enquiry_ids: dict[str, int] = {}
        self._contact_ids: dict[tuple[int, str], int] = {}
        self._next_customer_id = itertools.count(CUSTOMER_ID_START)
        self._next_enquiry_id = itertools.count(ENQUIRY_ID_START)
        self._next_contact_id = itertools.count(CONTACT_ID_START)

    def __len__(self) -> int:
        return len(self._orders)

    def upsert(self, order_id: str, document: dict[str, Any]) -> dict[str, Any]:
        """Store (or merge into) an order and return the success payload with its stable ids."""
        customer = document["customer_info"]
        name = text(customer["customer_name"])
        phone, email = text(customer.get("phone")), text(customer.get("email_id"))
        keys = [(name, "phone", phone)] if phone else []
        if email:
            keys.append((name, "email", email))
        keys = keys or [(name, "", "")]
        customer_id = next((self._customer_ids[key] for key in keys if key in self._customer_ids), None)
        if customer_id is None:
            customer_id = next(self._next_customer_id)
        for key in keys:
            self._customer_ids.setdefault(key, customer_id)

        contacts = document.get("contact_info")
        contact = contacts[0] if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict) else {}
        contact_key = (
            customer_id,
            text(contact.get("contact_person_phone")) or text(contact.get("contact_person_email")) or phone or email,
        )
        contact_id = self._contact_ids.get(contact_key)
        if contact_id is None:
            contact_id = self._contact_ids[contact_key] = next(self._next_contact_id)
        enquiry_id = self._enquiry_ids.get(order_id)
        if enquiry_id is None:
            enquiry_id = self._enquiry_ids[order_id] = next(self._next_enquiry_id)

        previous = self._orders.get(order_id)
        updates = 1 if previous is None else previous.updates + 1
        body = document if previous is None else merge_sections(previous.body, document)
        self._orders[order_id] = StoredOrder(body, customer_id, enquiry_id, contact_id, updates)
        return success_payload(customer_id, enquiry_id, contact_id)

    def bodies(self, order_ids: list[str] | None = None) -> list[Any]:
        """The stored bodies of these orders (the known ones, in this order), or of all; not copies."""
        keys = self._orders.keys() if order_ids is None else [key for key in order_ids if key in self._orders]
        return [self._orders[key].body for key in keys]

    def copies(self) -> dict[str, Any]:
        """Order id → a copy of its stored body."""
        return {key: copy.deepcopy(order.body) for key, order in self._orders.items()}

    def update_counts(self) -> dict[str, int]:
        """Order id → how many successful add-update requests it received."""
        return {key: order.updates for key, order in self._orders.items()}

    def record(self, order_id: str) -> dict[str, Any] | None:
        """One order's body, update count and ids (a copy), or None when unknown."""
        order = self._orders.get(order_id)
        return None if order is None else {"order_id": order_id, **asdict(order)}
