"""Typed errors raised when talking to Kapture.

Every error text is safe to log: it names the order id and the HTTP status, carries at most a short,
scrubbed excerpt of what Kapture answered (the order's own personal values, emails and phone-like
numbers blanked), and never the credentials or the order body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_EMAIL = re.compile(r"[^\s@\"'<>]+@[^\s@\"'<>]+")
_LONG_NUMBER = re.compile(r"\+?\d[\d\s-]{6,}\d")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
EXCERPT_LENGTH = 160


def scrub(text: str, limit: int = EXCERPT_LENGTH, personal: Iterable[str] = ()) -> str:
    """Shorten a server-supplied text; blank the ``personal`` values it quotes (a customer's name that
    Kapture echoes back, say) and whatever looks like an email address or a phone number."""
    text = _CONTROL.sub(" ", text)
    values = sorted({v.strip() for v in personal if len(v.strip()) >= 3}, key=len, reverse=True)
    if values:
        text = re.sub("|".join(map(re.escape, values)), "<personal data>", text, flags=re.IGNORECASE)
    text = _EMAIL.sub("<email>", text)
    text = _LONG_NUMBER.sub("<number>", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class KaptureError(Exception):
    """Base class of every error this provider raises about Kapture's answers."""

    retryable = False

    def __init__(self, message: str, *, order_id: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.order_id = order_id
        self.status_code = status_code


class KaptureAuthError(KaptureError):
    """Kapture refused the credentials (401, 403 or an "Invalid Auth Key" body). Never retried."""


class KaptureRejectedError(KaptureError):
    """Kapture refused this order (4xx, or a ``"status": "failed"`` body). Never retried."""


class KaptureTransientError(KaptureError):
    """Kapture could not be reached or was overloaded (429, 5xx, network, timeout) after every retry."""

    retryable = True


class KaptureResponseError(KaptureError):
    """Kapture answered 2xx with JSON this client cannot interpret (no ``status``). Not retried."""
