"""Typed errors raised when talking to Kapture.

Every error text is safe to log: it names the order id and the HTTP status, carries at most a short,
scrubbed excerpt of what Kapture answered (the order's own personal values, emails and phone-like
numbers blanked), and never the credentials or the order body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

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


class Cause(StrEnum):
    """Why no usable answer came back from the network (``KaptureError.cause``)."""

    DNS = "dns"  #: the host name could not be resolved
    REFUSED = "refused"  #: the host (or the proxy) refused the TCP connection
    UNREACHABLE = "unreachable"  #: no route to the host (network unreachable, host down)
    CONNECT_TIMEOUT = "connect-timeout"  #: no connection within the connect timeout
    READ_TIMEOUT = "read-timeout"  #: connected, but no answer within the read timeout
    RESET = "reset"  #: the connection was reset or closed before the answer
    CUT_OFF = "cut-off"  #: the answer ended before its announced length
    INVALID_HTTP = "invalid-http"  #: the answer was not HTTP
    TLS = "tls"  #: the TLS handshake failed (certificate not trusted, client certificate refused…)
    PROXY = "proxy"  #: the proxy refused to open a tunnel to Kapture


class KaptureError(Exception):
    """Base class of every error this provider raises about Kapture's answers.

    :ivar order_id: the order concerned, if any.
    :ivar status_code: the HTTP status of Kapture's answer (``None`` when none came).
    :ivar cause: for network failures, what failed (a :class:`Cause`); ``None`` for an HTTP answer.
    :ivar host: for network failures, the ``host:port`` that failed (Kapture's, or the proxy's).
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        order_id: str | None = None,
        status_code: int | None = None,
        cause: Cause | None = None,
        host: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.order_id = order_id
        self.status_code = status_code
        self.cause = cause
        self.host = host


class KaptureSetupError(KaptureError):
    """Every request will fail the same way until the connection's settings change. Never retried; a
    sync stops at the first one instead of failing every order in turn."""


class KaptureAuthError(KaptureSetupError):
    """Kapture refused the credentials (401, 403 or an "Invalid Auth Key" body)."""


class KaptureConnectionError(KaptureSetupError):
    """Kapture cannot be reached with this connection's network settings: its TLS certificate is not
    trusted (``ca_bundle``), the client certificate is missing or refused (``client_cert``), the proxy
    refused the tunnel (``proxy`` credentials or rules). The text says which and what to set."""


class KaptureRejectedError(KaptureError):
    """Kapture refused this order (4xx, or a ``"status": "failed"`` body). Never retried."""


class KaptureTransientError(KaptureError):
    """Kapture could not be reached or was overloaded (429, 5xx, DNS, refused, timeout, reset) after
    every retry; ``cause`` and ``host`` say which network failure it was, if any."""

    retryable = True


class KaptureResponseError(KaptureError):
    """Kapture answered 2xx with JSON this client cannot interpret (no ``status``). Not retried."""
