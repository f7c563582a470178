"""POST to one Kapture origin through urllib3's public API, and trust an answer only when it is whole.

urllib3 keeps the connections (pool, proxy tunnel, TLS, timeouts); this module adds what no library
does for us: one deadline for the whole answer, a cap on its body, framing headers checked before the
body is believed (RFC 9112 §6.3), and a connection with any byte left unread after its answer closed
instead of reused, so that nothing a server sends between answers is read as the next order's answer.
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    InvalidHeader,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util.ssltransport import SSLTransport

from kapture_provider.exceptions import Cause
from kapture_provider.hooks.deadline import ANSWER_DEADLINES
from kapture_provider.hooks.network import Proxy, Trust, bracketed, tls_context

#: The largest answer body read; Kapture's answers are a few hundred bytes of JSON.
MAX_ANSWER_BYTES = 1 << 20
_NAME_MISMATCHES = frozenset({62, 64})  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and _IP_ADDRESS_MISMATCH
_PATH_CHARACTERS = "/%:@!$&'()*+,;=-._~"  # kept as they are in a request path; anything else is %-encoded
_FORBIDDEN_IN_HEADER = re.compile(r"[\x00-\x1f\x7f]")
_FORBIDDEN_IN_FIELD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 §5.5: no controls but tab
_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3})\b ?(.*)")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes "²"
_READABLE_CODINGS = frozenset({"identity", "gzip", "x-gzip", "deflate"})  # what urllib3 decodes by itself
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
_phase = threading.local()  # .connecting: the current thread's request is opening its connection


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


def _unread_in_tls(sock: Any) -> bool:
    """Whether the TLS layer holds bytes already received but not read."""
    if isinstance(sock, ssl.SSLSocket):
        return sock.pending() > 0
    if isinstance(sock, SSLTransport):  # TLS inside an https proxy's TLS
        return sock.sslobj.pending() > 0 or sock.incoming.pending > 0
    return False


class _Probe(io.RawIOBase):
    """A socket's raw reader that can be told to answer "nothing now" instead of waiting for bytes."""

    def __init__(self, raw: Any):
        self.source = raw
        self.probing = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        return None if self.probing else self.source.readinto(buffer)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.source.close()
        super().close()


class _AnswerReader(io.BufferedReader):
    """The buffered reader an answer is read from. When the answer is done, bytes still in its buffer or
    in the TLS layer mean the server sent more than one answer: the socket is shut down, so that urllib3's
    pool drops the connection (it drops any socket that is readable when taken) instead of reading them
    as the next order's answer."""

    def __init__(self, sock: Any):
        self._probe = _Probe(sock.makefile("rb", buffering=0))
        super().__init__(self._probe)
        self._sock = sock

    def close(self) -> None:
        if not self.closed:
            self._probe.probing = True
            try:
                if self.peek(1) or _unread_in_tls(self._sock):
                    self._sock.shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError):
                pass  # the socket is closed already: nothing of it can be reused
        super().close()


class _GuardedHTTPResponse(http.client.HTTPResponse):
    """http.client's answer, read through an :class:`_AnswerReader`."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any):
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # the standard reader, unused
        self.fp = _AnswerReader(sock)


class _GuardedHTTPConnection(HTTPConnection):
    """A urllib3 connection whose answers are never followed by unread bytes when it is reused, and have
    one deadline each (:mod:`~kapture_provider.hooks.deadline`)."""

    response_class = _GuardedHTTPResponse

    def connect(self) -> None:
        _phase.connecting = True
        super().connect()
        _phase.connecting = False

    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]
        ANSWER_DEADLINES.start(self.sock, self.timeout if isinstance(self.timeout, float | int) else None)
        return super().getresponse()


class _GuardedHTTPSConnection(_GuardedHTTPConnection, HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class Transport:
    """Keep-alive connections to the origin of ``base_url``, directly or through ``proxy``.

    TLS certificates and host names are verified against ``trust``; redirects are answers like any
    other (never followed); nothing is retried here.

    :param base_url: ``http(s)://host[:port][/path]``; request paths are appended to it.
    :param headers: sent with every request (``Host`` and ``Content-Length`` are added).
    :param size: connections kept open for reuse: the number of threads sending at once.
    :param connect_timeout: seconds to connect (through the proxy's tunnel, TLS handshake included).
    :param read_timeout: seconds for the whole answer, from the request sent to its last byte.
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
        manager: urllib3.PoolManager
        if proxy is None:
            manager = urllib3.PoolManager(num_pools=1, **options)
        else:
            manager = urllib3.ProxyManager(
                proxy.url, num_pools=1, proxy_headers=proxy.headers, proxy_ssl_context=tls, **options
            )
            if parts.scheme == "http":  # forwarded, not tunnelled: the request line carries the whole URL
                self._prefix = f"http://{self.host}{self._prefix}"
                headers = {**headers, **proxy.headers}  # the proxy reads them; a tunnel sends them in CONNECT
        manager.pool_classes_by_scheme = {"http": _GuardedHTTPConnectionPool, "https": _GuardedHTTPSConnectionPool}
        self._manager = manager
        self._pool = manager.connection_from_host(parts.hostname, parts.port, parts.scheme)
        self._timeouts = connect_timeout, read_timeout
        self._headers = {"Host": self.host, "Accept-Encoding": "identity", **headers}
        if any(_FORBIDDEN_IN_HEADER.search(f"{name}{value}") for name, value in self._headers.items()):
            raise ValueError("a request header would contain a line break or a control character")
        try:
            "".join(f"{name}{value}" for name, value in self._headers.items()).encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(
                f"the host name {parts.hostname!r} is not ASCII: write an international name in its xn-- form"
            ) from None

    def post(self, path: str, body: bytes) -> Answer:
        """POST ``body`` to ``path`` and read the whole answer; raises :class:`TransportError`."""
        _phase.connecting = False
        response: urllib3.BaseHTTPResponse | None = None
        try:
            response = self._pool.urlopen(
                "POST",
                f"{self._prefix}{path}",
                body=body,
                headers=self._headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
            answer = self._read(response)
        except TransportError:
            if response is not None:
                response.close()  # whatever was left unread on it must not be taken for the next answer
            raise
        except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as err:
            if response is not None:
                response.close()
            expired = ANSWER_DEADLINES.finish()
            raise self._failure(err, connecting=_phase.connecting, expired=expired) from None
        finally:
            ANSWER_DEADLINES.finish()
            if response is not None:
                response.release_conn()  # a closed connection is opened again when next taken
        return answer

    def _read(self, response: urllib3.BaseHTTPResponse) -> Answer:
        """The answer's body, within :data:`MAX_ANSWER_BYTES`, once its framing is known to be sound."""
        if response.status < 200:  # an interim answer (http.client skips only 100) is no answer
            raise self._invalid(f"an interim HTTP {response.status} answer instead of a final one")
        headers = response.headers
        if any(_FORBIDDEN_IN_FIELD.search(value) for value in headers.values()):
            raise self._invalid("a control character in a header")
        lengths = set(headers.getlist("content-length"))
        coding = headers.get("transfer-encoding")
        if lengths and coding is not None:
            raise self._invalid("both Content-Length and Transfer-Encoding")
        if len(lengths) > 1:
            raise self._invalid("conflicting Content-Length headers")
        if lengths:
            (length,) = lengths
            if not _CONTENT_LENGTH.fullmatch(length.strip()):
                raise self._invalid(f"an invalid Content-Length {length[:20]!r}")
            if int(length) > MAX_ANSWER_BYTES:
                raise self._too_large()
        if coding is not None and coding.strip().lower() != "chunked":
            raise self._invalid(f"an unsupported Transfer-Encoding {coding[:20]!r}")
        content_coding = (headers.get("content-encoding") or "identity").strip().lower()
        if content_coding not in _READABLE_CODINGS:
            raise self._invalid(f"a Content-Encoding we cannot read ({content_coding[:20]!r})")
        body = response.read(MAX_ANSWER_BYTES + 1)
        if len(body) > MAX_ANSWER_BYTES:
            raise self._too_large()
        return Answer(response.status, body, headers.get("retry-after"))

    def _invalid(self, what: str) -> TransportError:
        return TransportError(
            f"the answer from {self.address} was not valid HTTP ({what})", cause=Cause.INVALID_HTTP, host=self.address
        )

    def _too_large(self) -> TransportError:
        return TransportError(
            f"the answer from {self.address} was larger than {MAX_ANSWER_BYTES // 1024} KiB",
            cause=Cause.TOO_LARGE,
            host=self.address,
        )

    def close(self) -> None:
        """Close the idle connections; those in use are closed when their request ends."""
        self._manager.clear()
        self._pool.close()

    def describe_route(self) -> str:
        """``directly`` or ``through proxy … (from …)``: for messages about the connection."""
        return f"through {self.proxy}" if self.proxy else "directly"

    # -- naming failures --------------------------------------------------------------------------
    def _failure(self, err: BaseException, *, connecting: bool, expired: bool) -> TransportError:
        """Name what failed: opening the connection (``connecting``) or the exchange on it; ``expired``:
        the answer's deadline cut it off."""
        host, proxy = self.address, self.proxy
        if expired:
            return TransportError(
                f"{host} sent no complete answer within the read timeout ({self._timeouts[1]:g} s)",
                cause=Cause.READ_TIMEOUT,
                host=host,
            )
        cause = _underlying(err)
        if proxy is not None and (
            isinstance(err, ProxyError)  # no connection to the proxy
            or _TUNNEL_REFUSED.search(str(cause)) is not None  # it refused the tunnel
            or (connecting and isinstance(cause, ReadTimeoutError) and cause.url == proxy.url)  # no CONNECT answer
        ):
            return self._proxy_failure(cause)
        via = f" ({self.describe_route()})" if proxy else ""
        name = f"the host name {_name(host)} (the connection's Host)"
        named = _connection_failure(cause, host, name, host, self._timeouts[0])
        if named is not None:
            return named
        if isinstance(cause, ReadTimeoutError | TimeoutError) and connecting:  # connected, no TLS handshake
            return TransportError(
                f"no TLS connection to {host} within the connect timeout ({self._timeouts[0]:g} s){via}",
                cause=Cause.CONNECT_TIMEOUT,
                host=host,
            )
        if isinstance(cause, ReadTimeoutError | TimeoutError):
            return TransportError(
                f"{host} sent no complete answer within the read timeout ({self._timeouts[1]:g} s)",
                cause=Cause.READ_TIMEOUT,
                host=host,
            )
        if isinstance(cause, ssl.SSLError):
            return self._tls_failure(cause, host)
        if isinstance(cause, http.client.IncompleteRead):
            return TransportError(f"the answer from {host} was cut off", cause=Cause.CUT_OFF, host=host)
        if isinstance(cause, OSError):  # a reset, a broken pipe, http.client's RemoteDisconnected
            return TransportError(
                f"the connection to {host} was reset or closed before the answer ({_os_reason(cause)}){via}",
                cause=Cause.RESET,
                host=host,
            )
        if isinstance(cause, DecodeError):
            return self._invalid("a body that does not decode as its Content-Encoding says")
        if isinstance(cause, InvalidHeader):  # conflicting Content-Length values, say
            return self._invalid("invalid framing headers")
        if isinstance(cause, http.client.HTTPException | ProtocolError):
            return self._invalid(type(cause).__name__)
        failed = f"the request to {host} failed ({type(cause).__name__}){via}"
        return TransportError(failed, cause=Cause.RESET, host=host)

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


def _underlying(err: BaseException) -> BaseException:
    """The error under urllib3's wrappers (``ProxyError``, ``ProtocolError``, ``SSLError``)."""
    while isinstance(err, ProxyError | ProtocolError | SSLError):
        inner = next((arg for arg in err.args if isinstance(arg, BaseException)), None)
        if inner is None:
            break
        err = inner
    return err


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
