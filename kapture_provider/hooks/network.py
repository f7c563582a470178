"""The network route to Kapture: which proxy (if any) and which certificates to trust.

Read once per hook, from the connection's extras first and the environment second, the way curl and
``requests`` read it (``HTTPS_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``, else certifi),
so a worker set up for those reaches Kapture the same way. Proxy credentials are registered with Airflow's
secret masker and kept out of every text this provider writes. The rules: docs/connection.md.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import certifi

from kapture_provider.compat import mask_secret

PROXY_EXTRA = "the connection extra 'proxy'"
_DIRECT = frozenset({"", "false", "none", "direct", "0", "no"})
_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


@dataclass(frozen=True)
class Proxy:
    """A forward proxy: HTTPS goes through it in a CONNECT tunnel, so it sees only Kapture's host and port."""

    url: str
    """``scheme://host:port``, without credentials: safe to show."""
    source: str
    """Where it was configured: ``the connection extra 'proxy'`` or an environment variable's name."""
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """``Proxy-Authorization`` when the proxy URL carries credentials (sent to the proxy only)."""
        if self.username is None:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode("ascii")
        return {"Proxy-Authorization": f"Basic {token}"}

    def __str__(self) -> str:
        return f"proxy {self.url} (from {self.source})"


def parse_proxy(value: str, source: str) -> Proxy:
    """A :class:`Proxy` from ``[scheme://][user:password@]host[:port]`` (no scheme: ``http://``, as curl)."""
    text = value.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"{source}: a {parts.scheme}:// proxy is not supported; give an http:// (or https://) proxy URL"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"{source}: the proxy URL has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{source}: the proxy URL has no host")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    proxy = Proxy(f"{parts.scheme}://{bracketed(parts.hostname)}:{port}", source, username, password)
    if username is not None:  # a user name alone is often a token
        secret = password or username
        raw = parts.password if password else parts.username
        for text in {secret, quote(secret, safe=""), raw or ""} - {""}:
            mask_secret(text)
        mask_secret(proxy.headers["Proxy-Authorization"].removeprefix("Basic "))
    return proxy


def choose_proxy(url: str, configured: Any) -> Proxy | None:
    """The proxy to reach ``url`` through, or ``None`` to connect directly.

    :param configured: the ``proxy`` extra; ``None`` (absent) defers to the environment.
    """
    if configured is not None:
        if configured is False or str(configured).strip().lower() in _DIRECT:
            return None
        return parse_proxy(str(configured), PROXY_EXTRA)
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()  # lower-case names win, as in curl and requests
    value = proxies.get(parts.scheme) or proxies.get("all")
    host = parts.hostname or ""
    if not value or (parts.scheme == "http" and is_loopback(host)):
        return None
    if bypasses_proxy(host, parts.port, proxies.get("no", "")):
        return None
    return parse_proxy(value, _variable_holding(value, parts.scheme))


def is_loopback(hostname: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def bypasses_proxy(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``no_proxy`` lists ``host``: as ``urllib``/``requests`` read it, with CIDR ranges."""
    if not no_proxy.strip():
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        for entry in (e.strip() for e in no_proxy.split(",")):
            try:
                if "/" in entry and address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    named = f"{bracketed(host)}:{port}" if port else bracketed(host)
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
    return bool(bypass(named, {"no": no_proxy}))


def _variable_holding(value: str, scheme: str) -> str:
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
        if os.environ.get(name) == value:
            return name
    return f"{scheme.upper()}_PROXY"


def bracketed(host: str) -> str:
    """An IPv6 address in brackets, as in a URL; other hosts as they are."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Trust:
    """The certificates Kapture's (and an https proxy's) TLS certificate is checked against, and ours."""

    ca_bundle: str
    """A PEM file (or a directory of hashed certificates) of trusted CAs."""
    source: str
    """``the connection extra 'ca_bundle'``, an environment variable's name, or ``certifi``."""
    client_cert: str | None = None
    client_key: str | None = None
    client_key_password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        if self.source == "certifi":
            return "certifi's CA bundle"
        return f"the CA bundle {self.ca_bundle} (from {self.source})"


def choose_trust(extra: Mapping[str, Any]) -> Trust:
    """The trust settings from the connection extras and the environment (see the module's docstring)."""
    client = {name: _text(extra.get(name)) for name in ("client_cert", "client_key", "client_key_password")}
    if client["client_key"] and not client["client_cert"]:
        raise ValueError("the connection extra 'client_key' is set without 'client_cert' (the certificate's PEM file)")
    if client["client_key_password"]:
        mask_secret(client["client_key_password"])
    if bundle := _text(extra.get("ca_bundle")):
        return Trust(bundle, "the connection extra 'ca_bundle'", **client)
    for name in _CA_VARIABLES:
        if bundle := _text(os.environ.get(name)):
            return Trust(bundle, name, **client)
    return Trust(certifi.where(), "certifi", **client)


def tls_context(trust: Trust) -> ssl.SSLContext:
    """A client TLS context verifying certificates and host names against ``trust``; raises ``ValueError``
    naming the setting when a file cannot be used."""
    try:
        if os.path.isdir(trust.ca_bundle):
            context = ssl.create_default_context(capath=trust.ca_bundle)
        else:
            context = ssl.create_default_context(cafile=trust.ca_bundle)
    except (OSError, ssl.SSLError) as err:
        raise ValueError(f"cannot use {trust.describe()}: {_reason(err)}; give a PEM file of CA certificates") from None
    if trust.client_cert:
        try:
            context.load_cert_chain(trust.client_cert, trust.client_key, trust.client_key_password)
        except (OSError, ssl.SSLError) as err:
            key = f", client_key {trust.client_key}" if trust.client_key else ""
            raise ValueError(
                f"cannot use the client certificate (client_cert {trust.client_cert}{key}): {_reason(err)}"
            ) from None
    return context


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError):
        return err.reason or str(err)
    return err.strerror or str(err) if isinstance(err, OSError) else str(err)
