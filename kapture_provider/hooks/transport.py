"""POST to one Kapture origin over urllib3: keep-alive connections shared by many threads, every failure named.

The hook sends one kind of request (a POST of a small JSON body, answered by a small JSON body) to one
host and does its own retries, authentication and (refused) redirects. So the urllib3 connection pool
for that origin is resolved once; urllib3 keeps the idle connections (closing those the server dropped),
opens new ones (timeouts, TLS verification, the proxy's CONNECT tunnel) and puts them back. The exchange
itself is one write of the request and :mod:`~kapture_provider.hooks.http_answer` on the answer:
urllib3's ``urlopen`` (retries, redirects, header merging, response objects, all unused here) and the
standard library's parser under it cost 0.4 ms more CPU per request under 8 sending threads, as much as
the rest of a sync (``requests`` costs another 0.7 ms). Going around ``urlopen`` means calling the
pool's ``_get_conn``, ``_put_conn`` and ``_prepare_proxy``, unchanged through urllib3 2.x (the
dependency is ``<3``).

Through a proxy, an ``https://`` Kapture is reached in a CONNECT tunnel: the proxy sees its host and
port, never the Authorization header or the body. (A plain ``http://`` Kapture, allowed with
``allow_insecure_http``, is forwarded in the clear, as curl does; a loopback one takes only a ``proxy``
extra, never the environment's proxy.)
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from kapture_provider.exceptions import Cause
from kapture_provider.hooks.http_answer import read_answer
from kapture_provider.hooks.network import Proxy, Trust, bracketed, tls_context

_NAME_MISMATCHES = frozenset({62, 64})  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and _IP_ADDRESS_MISMATCH
_PATH_CHARACTERS = "/%:@!$&'()*+,;=-._~"  # kept as they are in a request path; anything else is %-encoded
_FORBIDDEN_IN_HEADER = re.compile(r"[\x00-\x1f\x7f]")
_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3})\b ?(.*)")
#: The server refused or required our client certificate (TLS alerts seen by the client).
_CLIENT_CERTIFICATE_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, its body read in full."""

    status: int
    body: bytes
    retry_after: str | None = None


class TransportError(Exception):
    """No usable answer. The text is one sentence naming the host that failed and why.

    :ivar cause: what failed (:class:`~kapture_provider.exceptions.Cause`).
    :ivar host: ``host:port`` of the party that failed: Kapture, or the proxy.
    :ivar permanent: retrying cannot help (a certificate not trusted, a proxy refusing the credentials):
        the connection's settings must change.
    """

    def __init__(self, message: str, *, cause: Cause, host: str, permanent: bool = False):
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.host = host
        self.permanent = permanent


class Transport:
    """Keep-alive connections to the origin of ``base_url``, directly or through ``proxy``.

    TLS certificates and host names are verified against ``trust``; redirects are answers like any
    other (never followed); nothing is retried here.

    :param base_url: ``http(s)://host[:port][/path]``; request paths are appended to it.
    :param headers: sent with every request (``Host`` and ``Content-Length`` are added).
    :param size: connections kept open for reuse: the number of threads sending at once.
    :param connect_timeout: seconds to connect (through the proxy's tunnel, TLS handshake included).
    :param read_timeout: seconds to wait for each read of the answer.
    :param proxy: the forward proxy to go through, or ``None``.
    :param trust: the CAs to verify against and our client certificate (``https://`` only).
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        size: int,
        connect_timeout: float,
        read_timeout: float,
        proxy: Proxy | None,
        trust: Trust,
    ):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.proxy = proxy
        self.trust = trust
        self.host = parts.netloc.rpartition("@")[2]  # as the connection names it: acme.kapturecrm.com
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.address = f"{bracketed(parts.hostname)}:{port}"  # what the network failures name
        self._prefix = quote(parts.path.rstrip("/"), safe=_PATH_CHARACTERS)
        tls = tls_context(trust) if parts.scheme == "https" or (proxy and proxy.url.startswith("https:")) else None
        options: dict[str, Any] = {
            "maxsize": size,
            "block": False,  # a thread beyond `size` gets a connection of its own (closed after use)
            "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        }
        if tls is not None:
            options["ssl_context"] = tls
        self._manager: urllib3.PoolManager
        if proxy is None:
            self._manager = urllib3.PoolManager(num_pools=1, **options)
        else:
            self._manager = urllib3.ProxyManager(
                proxy.url, num_pools=1, proxy_headers=proxy.headers, proxy_ssl_context=tls, **options
            )
            if parts.scheme == "http":  # forwarded, not tunnelled: the request line carries the whole URL
                self._prefix = f"http://{self.host}{self._prefix}"
                headers = {**headers, **proxy.headers}  # the proxy reads them; a tunnel sends them in CONNECT
        self._pool = self._manager.connection_from_host(parts.hostname, parts.port, parts.scheme)
        self._tunnelled = proxy is not None and parts.scheme == "https"
        self._timeouts = connect_timeout, read_timeout
        fields = {"Host": self.host, **headers}
        if any(_FORBIDDEN_IN_HEADER.search(f"{name}{value}") for name, value in fields.items()):
            raise ValueError("a request header would contain a line break or a control character")
        try:
            self._head = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(
                f"the host name {parts.hostname!r} is not ASCII: write an international name in its xn-- form"
            ) from None

    def post(self, path: str, body: bytes) -> Answer:
        """POST ``body`` to ``path`` and read the whole answer; raises :class:`TransportError`."""
        connection: HTTPConnection | None = None  # or its subclass HTTPSConnection
        connecting = finished = False
        try:
            connection = cast(HTTPConnection, self._pool._get_conn())  # an idle connection still open, or a new one
            if connection.is_closed:
                connecting = True
                self._connect(connection)
                connecting = False
            answer = self._exchange(connection, path, body)
            finished = True
        except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as err:
            raise self._failure(err, connection, connecting) from None
        finally:
            if connection is not None and not finished:
                connection.close()  # whatever was left unread on it must not be taken for the next answer
            self._pool._put_conn(connection)  # a closed connection is opened again when next taken
        return answer

    def _connect(self, connection: HTTPConnection) -> None:
        """Open ``connection`` within the connect timeout (through the proxy's tunnel, TLS handshake
        included); reads wait up to the read timeout from then on."""
        connection.timeout = self._timeouts[0]
        if self._tunnelled:
            self._pool._prepare_proxy(connection)  # CONNECT, then TLS with Kapture inside the tunnel
        else:
            connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(self._timeouts[1])

    def _exchange(self, connection: HTTPConnection, path: str, body: bytes) -> Answer:
        """Send the request in one write and read the answer, leaving ``connection`` ready for the next."""
        assert connection.sock is not None
        request_line = f"POST {self._prefix}{path} HTTP/1.1\r\n".encode("ascii")
        connection.sock.sendall(b"%s%sContent-Length: %d\r\n\r\n%s" % (request_line, self._head, len(body), body))
        answer = read_answer(connection.sock)
        if answer.will_close:
            connection.close()
        return Answer(answer.status, answer.body, answer.headers.get("retry-after"))

    def close(self) -> None:
        """Close the idle connections; those in use are closed when their request ends."""
        self._manager.clear()
        self._pool.close()

    def describe_route(self) -> str:
        """``directly`` or ``through proxy … (from …)``: for messages about the connection."""
        return f"through {self.proxy}" if self.proxy else "directly"

    # -- naming failures --------------------------------------------------------------------------
    def _failure(self, err: BaseException, connection: HTTPConnection | None, connecting: bool) -> TransportError:
        """Name what failed: opening the connection (``connecting``) or the exchange on it."""
        proxy = self.proxy
        if (
            proxy is not None
            and connecting
            and (
                connection is None
                or not connection.has_connected_to_proxy  # no connection to the proxy
                or isinstance(err, TimeoutError)  # the proxy did not answer the CONNECT
                or (isinstance(err, OSError) and _TUNNEL_REFUSED.search(str(err)) is not None)  # it refused
            )
        ):
            return self._proxy_failure(err)
        host, via = self.address, f" ({self.describe_route()})" if proxy else ""
        name = f"the host name {_name(host)} (the connection's Host)"
        named = _connection_failure(err, host, name, host, self._timeouts[0])
        if named is not None:
            return named
        if isinstance(err, TimeoutError) and connecting:  # connected, but the TLS handshake did not finish
            return TransportError(
                f"no TLS connection to {host} within the connect timeout ({self._timeouts[0]:g} s){via}",
                cause=Cause.CONNECT_TIMEOUT,
                host=host,
            )
        if isinstance(err, TimeoutError):
            return TransportError(
                f"{host} sent no answer within the read timeout ({self._timeouts[1]:g} s)",
                cause=Cause.READ_TIMEOUT,
                host=host,
            )
        if isinstance(err, ssl.SSLError):
            return self._tls_failure(err, host)
        if isinstance(err, http.client.IncompleteRead):
            return TransportError(f"the answer from {host} was cut off", cause=Cause.CUT_OFF, host=host)
        if isinstance(err, OSError):  # a reset, a broken pipe, http.client's RemoteDisconnected
            return TransportError(
                f"the connection to {host} was reset or closed before the answer ({_os_reason(err)}){via}",
                cause=Cause.RESET,
                host=host,
            )
        if isinstance(err, http.client.HTTPException):
            return TransportError(f"the answer from {host} was not valid HTTP", cause=Cause.INVALID_HTTP, host=host)
        return TransportError(f"the request to {host} failed ({type(err).__name__}){via}", cause=Cause.RESET, host=host)

    def _tls_failure(self, err: ssl.SSLError, host: str) -> TransportError:
        if isinstance(err, ssl.SSLCertVerificationError):
            if err.verify_code in _NAME_MISMATCHES:
                message = (
                    f"the TLS certificate of {host} is for another host name ({err.verify_message}): "
                    "check the connection's Host"
                )
            else:
                inspecting = " (a TLS-inspecting proxy shows its own certificate: trust its CA)" if self.proxy else ""
                message = (
                    f"the TLS certificate of {host} is not trusted ({err.verify_message}; checked against "
                    f"{self.trust.describe()}): set the connection extra ca_bundle (or REQUESTS_CA_BUNDLE or "
                    f"SSL_CERT_FILE) to the PEM file of the CA that issued it{inspecting}"
                )
            return TransportError(message, cause=Cause.TLS, host=host, permanent=True)
        reason = err.reason or ""
        if reason in _CLIENT_CERTIFICATE_ALERTS:
            mine = f"client certificate {self.trust.client_cert}" if self.trust.client_cert else "no client certificate"
            return TransportError(
                f"{host} refused the TLS handshake ({reason.lower()}; we sent {mine}): it wants a client "
                "certificate it trusts; set the connection extras client_cert and client_key",
                cause=Cause.TLS,
                host=host,
                permanent=True,
            )
        if reason == "WRONG_VERSION_NUMBER":
            return TransportError(
                f"{host} does not speak TLS on that port: check the connection's Host (http:// or https://, port)",
                cause=Cause.TLS,
                host=host,
                permanent=True,
            )
        return TransportError(
            f"the TLS connection to {host} failed ({reason.lower() or type(err).__name__})",
            cause=Cause.TLS,
            host=host,
        )

    def _proxy_failure(self, err: BaseException) -> TransportError:
        """A failure between us and the proxy, or the proxy's refusal to open the tunnel."""
        assert self.proxy is not None
        proxy, target = self.proxy, self.address
        host = proxy.url.split("://", 1)[1]
        refused = _TUNNEL_REFUSED.search(str(err)) if isinstance(err, OSError) else None
        if refused is not None:
            status, phrase = int(refused.group(1)), refused.group(2).strip()
            answer = f"HTTP {status}" + (f" {phrase}" if phrase else "")
            if status in (401, 407):  # tinyproxy answers a CONNECT with 401
                return TransportError(
                    f"the {proxy} refused its credentials ({answer}) for a tunnel to {target}: "
                    "check the user and password in the proxy URL (http://user:password@host:port)",
                    cause=Cause.PROXY,
                    host=host,
                    permanent=True,
                )
            if status in (403, 405):
                return TransportError(
                    f"the {proxy} does not allow a tunnel to {target} ({answer}): ask for that host and port to be "
                    "allowed, or, if Kapture must be reached directly, list it in no_proxy",
                    cause=Cause.PROXY,
                    host=host,
                    permanent=True,
                )
            return TransportError(
                f"the {proxy} could not open a tunnel to {target} ({answer})", cause=Cause.PROXY, host=host
            )
        named = _connection_failure(err, f"the {proxy}", f"the host name of the {proxy}", host, self._timeouts[0])
        if named is not None:
            return named
        if isinstance(err, TimeoutError):
            return TransportError(
                f"the {proxy} did not answer the tunnel request to {target} within {self._timeouts[0]:g} s",
                cause=Cause.READ_TIMEOUT,
                host=host,
            )
        if isinstance(err, ssl.SSLError):
            failure = self._tls_failure(err, host)
            return TransportError(f"{failure} (the {proxy})", cause=Cause.TLS, host=host, permanent=failure.permanent)
        return TransportError(
            f"the connection to the {proxy} was reset or closed ({_os_reason(err)})", cause=Cause.RESET, host=host
        )


def _connection_failure(err: BaseException, where: str, name: str, host: str, timeout: float) -> TransportError | None:
    """No TCP connection to ``where`` (Kapture's ``host:port``, or the proxy): DNS, refused, unreachable
    or timed out; ``None`` for any other failure. ``name`` is what the DNS lookup was for."""
    if isinstance(err, NameResolutionError):
        return TransportError(f"{name} could not be resolved (DNS: {_dns_reason(err)})", cause=Cause.DNS, host=host)
    if isinstance(err, NewConnectionError):
        if isinstance(err.__cause__, ConnectionRefusedError):
            return TransportError(
                f"{where} refused the connection (nothing listens on that port, or a firewall rejects it)",
                cause=Cause.REFUSED,
                host=host,
            )
        return TransportError(
            f"no connection to {where} ({_os_reason(err.__cause__)})", cause=Cause.UNREACHABLE, host=host
        )
    if isinstance(err, ConnectTimeoutError):
        return TransportError(
            f"no connection to {where} within the connect timeout ({timeout:g} s)",
            cause=Cause.CONNECT_TIMEOUT,
            host=host,
        )
    return None


def _name(address: str) -> str:
    """The host name of ``host:port``."""
    return address.rpartition(":")[0].strip("[]")


def _dns_reason(err: NameResolutionError) -> str:
    cause = err.__cause__
    if isinstance(cause, socket.gaierror) and cause.strerror:
        return cause.strerror
    return "unknown host"


def _os_reason(err: BaseException | None) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return (str(err) or type(err).__name__) if err is not None else "no reason given"
