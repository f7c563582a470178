"""Typed errors raised when talking to Kapture, and the cleaning of any text that came from outside.

Every error text is safe to log: it names the order id and the HTTP status, carries at most a short
excerpt of what the server answered, cleaned of our own secrets (even when the server echoes them
back) and of personal data, and never the order body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

_EMAIL = re.compile(r"[^\s@\"'<>]+@[^\s@\"'<>]+")
_LONG_NUMBER = re.compile(r"\+?\d[\d\s-]{6,}\d")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]+=*")
EXCERPT_LENGTH = 160
#: A piece of a secret this long (6 base64 characters decode to 4 bytes of ``user:password``) is a leak.
SECRET_PIECE = 6
SECRET_MARK = "<secret>"


@dataclass(frozen=True)
class Secrets:
    """Our own secrets, to blank in any text that came from outside (a server may echo them back).

    :ivar values: passwords: blanked where they appear whole.
    :ivar tokens: base64 tokens (``Basic`` credentials): blanked whole, and any base64 run holding a piece
        of one at least :data:`SECRET_PIECE` long (a cut or re-wrapped token still decodes to most of it).
    """

    values: tuple[str, ...] = field(default=(), repr=False)
    tokens: tuple[str, ...] = field(default=(), repr=False)

    def redact(self, text: str) -> str:
        """``text`` with every secret blanked."""
        whole = sorted({s for s in (*self.values, *self.tokens) if s}, key=len, reverse=True)
        if not whole:
            return text
        text = re.sub("|".join(map(re.escape, whole)), SECRET_MARK, text)
        pieces = {t[i : i + SECRET_PIECE] for t in self.tokens for i in range(len(t) - SECRET_PIECE + 1)}
        if not pieces:
            return text
        return _BASE64_RUN.sub(lambda run: SECRET_MARK if _holds_piece(run.group(), pieces) else run.group(), text)


def _holds_piece(run: str, pieces: set[str]) -> bool:
    return any(run[i : i + SECRET_PIECE] in pieces for i in range(len(run) - SECRET_PIECE + 1))


def scrub(text: str, limit: int = EXCERPT_LENGTH, personal: Iterable[str] = (), secrets: Secrets | None = None) -> str:
    """Clean and shorten a text that came from outside (a server's message, a proxy's status line):
    blank our ``secrets`` (:class:`Secrets`), the ``personal`` values it quotes (a customer's
    name that Kapture echoes back, say) and whatever looks like an email address or a phone number, then
    cut it to ``limit`` characters — cleaning first, so that a cut never leaves a piece of a secret."""
    text = _CONTROL.sub(" ", text)
    if secrets is not None:
        text = secrets.redact(text)
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
    INVALID_HTTP = "invalid-http"  #: the answer was not valid HTTP (malformed, or framing we cannot trust)
    TOO_LARGE = "too-large"  #: the answer's body was larger than any answer of Kapture's can be
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
