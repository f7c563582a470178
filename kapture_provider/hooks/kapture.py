"""KaptureHook: the one place that talks HTTP to Kapture."""

from __future__ import annotations

import base64
import email.utils
import json
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kapture_provider.compat import AirflowFailException, BaseHook, mask_secret
from kapture_provider.exceptions import (
    KaptureAuthError,
    KaptureConnectionError,
    KaptureError,
    KaptureRejectedError,
    KaptureResponseError,
    KaptureTransientError,
    Secrets,
    scrub,
)
from kapture_provider.hooks import connection_form
from kapture_provider.hooks.concurrency import DEFAULT_CEILING, ConcurrencyGate, ConcurrencyLimit
from kapture_provider.hooks.network import Proxy, Trust, choose_proxy, choose_trust, is_loopback
from kapture_provider.hooks.throttle import RequestThrottle
from kapture_provider.hooks.transport import Answer, Transport, TransportError
from kapture_provider.payload import personal_values, prepare_order

if TYPE_CHECKING:
    from kapture_provider.metrics import RequestMetrics

ORDER_PATH = "/ms/customer/order/api/v1/add-update"
#: Kapture's read-only order search; ``test_connection`` uses it so the Test button never writes.
ORDER_SEARCH_PATH = "/ms/customer-search/order-search/api/v1/pull-internal"
_AUTH_WORDS = ("auth key", "unauthori", "unauthenticated", "invalid token", "invalid credential")
_RETRYABLE_STATUS = frozenset({408, 425, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER = 300.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class KaptureSettings:
    """Everything the hook reads from the connection, after defaults and overrides."""

    base_url: str
    authorization: str = field(repr=False)
    proxy: Proxy | None = None
    trust: Trust | None = None  # None: certifi's bundle, no client certificate
    timeout: float = 30.0
    connect_timeout: float = 10.0
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    pool_size: int = 32
    secrets: Secrets = field(default_factory=Secrets, repr=False)
    """The password, the Basic token and the proxy's: blanked in any text that came from outside."""


def base_url_from_host(host: str | None, *, port: int | None = None, allow_insecure_http: bool = False) -> str:
    """A full base URL from the connection's Host (a URL, a host name, or a bare subdomain) and Port.

    Port 0 means no port, as None does: Airflow 3.3's Test button sends 0 for an empty Port. A Port
    that contradicts a port written in the Host is refused rather than one of them silently ignored.
    """
    host = (host or "").strip().rstrip("/")
    if not host:
        raise ValueError("the Kapture connection has no Host: set the base URL or the subdomain")
    if "://" not in host:
        host = f"https://{host}.kapturecrm.com" if "." not in host and ":" not in host else f"https://{host}"
    parts = urlsplit(host)
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "the Kapture connection's Host carries credentials (user:password@): put the user name in Login "
            "and the password in Password, and leave only the address in Host"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the Kapture connection's Host {host!r} is not an http(s) URL or a subdomain")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback(parts.hostname):
        raise ValueError(
            f"refusing plain http:// to {parts.hostname}: credentials would travel unencrypted. "
            "Use https://, or set the connection extra allow_insecure_http=true if you really mean it"
        )
    netloc = parts.netloc
    if port:
        if parts.port is not None and parts.port != port:
            raise ValueError(
                f"the Kapture connection's Host {host!r} names port {parts.port} but its Port is {port}: "
                "leave Port empty or make them agree"
            )
        if parts.port is None and port != _DEFAULT_PORTS[parts.scheme]:
            netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def basic_authorization(login: str | None, password: str | None) -> str:
    """``Basic base64(login:password)``; with no login, the password is a ready-made token."""
    if not password:
        raise ValueError("the Kapture connection has no Password (or token)")
    token = base64.b64encode(f"{login}:{password}".encode()).decode("ascii") if login else password
    mask_secret(token)
    return f"Basic {token}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class KaptureHook(BaseHook):
    """Talks to Kapture CRM's order API through pooled keep-alive connections, safe to share between threads.

    Connection: Host = base URL (``https://acme.kapturecrm.com``) or bare subdomain (``acme``);
    Login/Password = Kapture user name and password (empty Login: Password is a ready-made Basic token).
    Extras (all optional): ``timeout`` (read timeout, s, 30), ``connect_timeout`` (s, 10),
    ``max_retries`` (5), ``backoff_base`` (s, 0.5), ``backoff_max`` (s, 30), ``pool_size`` (32),
    ``allow_insecure_http`` (false; plain http is otherwise allowed for loopback hosts only),
    ``proxy`` (a forward proxy URL; ``""``/false: none; absent: ``HTTPS_PROXY``/``NO_PROXY``…),
    ``ca_bundle`` (PEM file of trusted CAs; absent: ``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``, else
    certifi), ``client_cert``/``client_key``/``client_key_password`` (mutual TLS); see
    :mod:`kapture_provider.hooks.network`. Keyword arguments override the extras.

    :param kapture_conn_id: the Airflow connection id.
    :param max_requests_per_second: space requests evenly across all threads using this hook.
    :param max_concurrency: the most requests in flight at once; below it the number adapts to Kapture's
        latency and 429s (see :mod:`kapture_provider.hooks.concurrency`).
    :param concurrency: a fixed number of requests in flight instead (no adapting).
    """

    conn_name_attr = "kapture_conn_id"
    default_conn_name = "kapture_default"
    conn_type = connection_form.CONN_TYPE
    hook_name = connection_form.HOOK_NAME

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form's standard fields (Airflow before 3.2; later ones read the provider info)."""
        return connection_form.ui_field_behaviour()

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The connection form's extras (Airflow before 3.2; later ones read the provider info)."""
        return connection_form.form_widgets()

    def __init__(
        self,
        kapture_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        pool_size: int | None = None,
        max_requests_per_second: float | None = None,
        max_concurrency: int = DEFAULT_CEILING,
        concurrency: int | None = None,
    ):
        super().__init__()
        self.kapture_conn_id = kapture_conn_id
        self._overrides = {"timeout": timeout, "max_retries": max_retries, "pool_size": pool_size}
        self.throttle = RequestThrottle(max_requests_per_second)  # adaptive unless a rate is given
        limit = ConcurrencyLimit(concurrency or max_concurrency, fixed=concurrency is not None)
        self.concurrency = ConcurrencyGate(limit)  # shared by every thread using this hook
        self._random = random.Random()
        self._lock = threading.Lock()
        self.requests_sent = 0
        self._transport: Transport | None = None
        self.metrics: RequestMetrics | None = None  # set by an operator when Airflow's metrics are on

    @cached_property
    def settings(self) -> KaptureSettings:
        """Connection fields and extras, validated, with constructor overrides applied."""
        conn = self.get_connection(self.kapture_conn_id)
        extra = conn.extra_dejson
        values: dict[str, Any] = {}
        for name, kind in (
            ("timeout", float), ("connect_timeout", float), ("max_retries", int),
            ("backoff_base", float), ("backoff_max", float), ("pool_size", int),
        ):  # fmt: skip
            raw = self._overrides.get(name)
            raw = extra.get(name) if raw is None else raw
            if raw not in (None, ""):
                try:
                    values[name] = kind(raw)
                except (TypeError, ValueError):
                    raise ValueError(f"connection extra {name!r} must be a {kind.__name__}, got {raw!r}") from None
        base_url = base_url_from_host(
            conn.host,
            port=conn.port,
            allow_insecure_http=str(extra.get("allow_insecure_http", "")).lower() in ("1", "true", "yes"),
        )
        authorization = basic_authorization(conn.login, conn.password)
        proxy = choose_proxy(base_url, extra.get("proxy"))
        passwords, tokens = [conn.password or ""], [authorization.removeprefix("Basic ")]
        if proxy is not None:
            passwords += [proxy.password or "", proxy.username or ""]
            tokens += [value.removeprefix("Basic ") for value in proxy.headers.values()]
        return KaptureSettings(
            base_url,
            authorization,
            proxy=proxy,
            trust=choose_trust(extra),
            secrets=Secrets(tuple(p for p in passwords if p), tuple(tokens)),
            **values,
        )

    @property
    def transport(self) -> Transport:
        """Keep-alive connections for concurrent use (directly or through the proxy), TLS verified."""
        if self._transport is None:
            with self._lock:  # the sending threads of a sync all ask for it at once
                if self._transport is None:
                    settings = self.settings
                    headers = {
                        "Authorization": settings.authorization,
                        "Content-Type": "application/json",
                        "Accept": "application/json",
                        "User-Agent": "airflow-provider-kapture",
                    }
                    self._transport = Transport(
                        settings.base_url,
                        headers=headers,
                        size=settings.pool_size,
                        connect_timeout=settings.connect_timeout,
                        read_timeout=settings.timeout,
                        proxy=settings.proxy,
                        trust=settings.trust or choose_trust({}),
                    )
        return self._transport

    def check_settings(self) -> None:
        """Read the connection now: one that cannot work (no Host or password, plain http to a remote
        host, a CA bundle or client certificate that cannot be read, a proxy URL that is not one) fails
        the task for good, before anything is read or sent, instead of being retried."""
        try:
            self.transport  # noqa: B018
        except ValueError as err:
            raise AirflowFailException(f"Kapture connection {self.kapture_conn_id!r}: {err}") from None

    def update_order(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Validate one order body and add/update it in Kapture; returns Kapture's parsed answer."""
        order = prepare_order(payload)
        return self.post_order(order.data, order_id=order.order_id)

    def post_order(self, data: bytes, *, order_id: str) -> dict[str, Any]:
        """POST an encoded order body, retrying transient failures; raises a :class:`KaptureError`."""
        return self._post(ORDER_PATH, data, order_id=order_id)

    def test_connection(self) -> tuple[bool, str]:
        """Check the host answers and accepts the credentials, without creating or changing anything.

        It asks Kapture's read-only order search for nothing (``cmId`` 0). A success, or the search's
        own refusal of that empty query (a failed body with 200 or 400), proves the credentials were
        accepted; "Invalid Auth Key", 401 or 403 means they were not; anything else (404, a redirect,
        an HTML page) means the Host does not point at Kapture. Each outcome is one sentence naming
        the host (and the proxy, if one is used).
        """
        try:
            host = self.transport.host
            self._post(ORDER_SEARCH_PATH, b'{"cmId": 0}', order_id=None, attempts=1)
        except ValueError as err:
            return False, f"Kapture connection {self.kapture_conn_id!r}: {err}"
        except KaptureAuthError as err:
            return False, f"{err.message}; check the User name and Password"
        except KaptureRejectedError as err:
            if err.status_code not in (200, 400):  # 404, 405, a redirect…: this is not Kapture's search
                redirect = " (a redirect: not followed)" if 300 <= (err.status_code or 0) < 400 else ""
                return False, self._not_kapture(host, f"HTTP {err.status_code}{redirect}")
            # the search refused the empty query after authenticating: what we asked for
        except KaptureResponseError:
            return False, self._not_kapture(host, "JSON without a status")
        except KaptureTransientError as err:
            if err.status_code is not None and 200 <= err.status_code < 300:  # an HTML page, say
                return False, self._not_kapture(host, f"HTTP {err.status_code} with a body that is not JSON")
            if err.status_code is not None:
                return False, f"{err.message}; Kapture is down or overloaded, try again later"
            return False, err.message
        except KaptureError as err:  # TLS or proxy settings
            return False, err.message
        route = f" {self.transport.describe_route()}" if self.settings.proxy else ""
        return True, f"Connected to Kapture at {self.settings.base_url}{route}; the credentials were accepted"

    def _not_kapture(self, host: str, answer: str) -> str:
        url = self.settings.base_url + ORDER_SEARCH_PATH
        return (
            f"{host} is not Kapture's API: its order search {url} answered {answer}; check the Host "
            "(the base URL or the subdomain)"
        )

    def _post(self, path: str, data: bytes, *, order_id: str | None, attempts: int | None = None) -> dict[str, Any]:
        settings = self.settings
        attempts = settings.max_retries + 1 if attempts is None else attempts
        for attempt in range(attempts):
            try:
                return self._attempt(path, data, order_id)
            except _Retry as retry:
                if attempt + 1 >= attempts:
                    error = retry.error
                    raise KaptureTransientError(
                        f"{error.message} (gave up after {attempts} attempts)" if attempts > 1 else error.message,
                        order_id=order_id,
                        status_code=error.status_code,
                        cause=error.cause,
                        host=error.host,
                    ) from None
                if retry.retry_after is not None:
                    self.throttle.pause(retry.retry_after)  # every thread of this hook waits
                    if self.metrics is not None:
                        self.metrics.paused(retry.retry_after)
                else:
                    cap = min(settings.backoff_max, settings.backoff_base * 2**attempt)
                    time.sleep(self._random.uniform(0, cap))  # exponential backoff, full jitter
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, path: str, data: bytes, order_id: str | None) -> dict[str, Any]:
        """One request: the parsed answer, a final :class:`KaptureError`, or :class:`_Retry`."""
        transport = self.transport
        self.concurrency.acquire()  # then the pace: a request leaves when its turn comes, not later
        sent_at, status = 0.0, None
        try:
            self.throttle.wait()
            with self._lock:
                self.requests_sent += 1
            sent_at = time.monotonic()
            answer = transport.post(path, data)
            status = answer.status
        except TransportError as err:
            text = self.settings.secrets.redact(f"{_prefix(order_id)}{err}")
            if err.permanent:  # TLS trust, client certificate, proxy credentials: settings to change
                raise KaptureConnectionError(text, order_id=order_id, cause=err.cause, host=err.host) from None
            raise _Retry(KaptureTransientError(text, order_id=order_id, cause=err.cause, host=err.host), None) from None
        finally:
            round_trip = time.monotonic() - sent_at if sent_at else 0.0
            self.concurrency.release(status, round_trip)
            self.throttle.observe(status, round_trip)
            if sent_at and self.metrics is not None:  # metrics, if an operator turned them on
                self.metrics.answered(status, round_trip)
        subject = f"order {order_id}: Kapture" if order_id else transport.host
        return _classify(answer, order_id, data, subject, self.settings.secrets)

    def close(self) -> None:
        """Close the pooled connections."""
        if self._transport is not None:
            self._transport.close()


class _Retry(Exception):
    """Internal: a transient answer, with the server's Retry-After if it sent one."""

    def __init__(self, error: KaptureTransientError, retry_after: float | None):
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


def _classify(answer: Answer, order_id: str | None, sent: bytes, subject: str, secrets: Secrets) -> dict[str, Any]:
    """Turn one HTTP answer into the parsed body, or raise the error class it belongs to.

    Texts start with ``subject`` (``order 7: Kapture``, or the host) and quote the answer cleaned of
    our ``secrets`` and of the personal values of the body ``sent``.
    """
    code = answer.status
    body: Any = None
    try:
        body = json.loads(answer.body)
    except ValueError:
        pass
    fields = {str(k).lower(): v for k, v in body.items()} if isinstance(body, dict) else {}
    status = str(fields.get("status", "")).lower()
    if 200 <= code < 300 and status == "success":
        return body  # type: ignore[no-any-return]
    personal = _personal_texts(sent)
    message = scrub(str(fields.get("message") or ""), personal=personal, secrets=secrets)
    if code in (401, 403) or (status == "failed" and any(w in message.lower() for w in _AUTH_WORDS)):
        raise KaptureAuthError(
            f"{subject} refused the credentials (HTTP {code}: {message or 'no message'})",
            order_id=order_id,
            status_code=code,
        )
    if code in _RETRYABLE_STATUS or (200 <= code < 300 and body is None):
        what = f"HTTP {code}" + (f": {message}" if message else f", body {_excerpt(answer.body, personal, secrets)}")
        error = KaptureTransientError(f"{subject} answered {what}", order_id=order_id, status_code=code)
        raise _Retry(error, parse_retry_after(answer.retry_after))
    if 300 <= code < 400:
        raise KaptureRejectedError(
            f"{subject} redirected (HTTP {code}); redirects are not followed so the credentials "
            "never go to another host: point the connection's Host at the final address",
            order_id=order_id,
            status_code=code,
        )
    if not 200 <= code < 300 or status == "failed":
        detail = message or (f"body {_excerpt(answer.body, personal, secrets)}" if body is None else "no message")
        raise KaptureRejectedError(
            f"{subject} refused the order (HTTP {code}): {detail}", order_id=order_id, status_code=code
        )
    raise KaptureResponseError(
        f"{subject} answered HTTP {code} without a success status: {_excerpt(answer.body, personal, secrets)}",
        order_id=order_id,
        status_code=code,
    )


def _personal_texts(sent: bytes) -> list[str]:
    try:
        return personal_values(json.loads(sent))
    except ValueError:
        return []


def _prefix(order_id: str | None) -> str:
    return f"order {order_id}: " if order_id else ""


def _excerpt(body: bytes, personal: list[str], secrets: Secrets) -> str:
    text = body[:400].decode("utf-8", errors="replace")
    return repr(scrub(text, 80, personal, secrets)) if text.strip() else "empty"
