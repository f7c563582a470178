"""Real network parts for the proxy and TLS tests: a private PKI, tinyproxy, and a recording TCP relay.

* :func:`make_pki` writes a CA, a server certificate for 127.0.0.1/localhost issued by it, an unrelated
  CA (the "wrong" one), and a client CA with a client certificate (``cryptography``, no network).
* :class:`TinyProxy` runs Debian's ``tinyproxy`` with its own configuration on a free loopback port.
  A missing ``tinyproxy`` fails the test (CI installs it): the proxy is what these tests are about.
* :class:`RecordingRelay` forwards TCP connections to an address and keeps every byte the client sent:
  put in front of the proxy, it holds exactly what the proxy received from the hook.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files :func:`make_pki` wrote."""

    ca: Path  # the CA that issued the server certificate
    wrong_ca: Path  # a CA that issued nothing we use
    server_cert: Path  # for 127.0.0.1 and localhost, with its key in server_key
    server_key: Path
    client_ca: Path  # the CA that issued the client certificate
    client_cert: Path
    client_key: Path
    misnamed_cert: Path  # issued by ``ca`` for kapture.example only, with its key in misnamed_key
    misnamed_key: Path


def make_pki(directory: Path) -> Pki:
    """Generate the certificates (EC P-256, valid from yesterday to tomorrow) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("Kapture Test Root CA")
    _, wrong_cert = _ca("Somebody Else's CA")
    client_ca_key, client_ca_cert = _ca("Kapture Test Client CA")
    server_key, server_cert = _leaf(
        "127.0.0.1",
        ca_key,
        ca_cert,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key, client_cert = _leaf("sync-robot", client_ca_key, client_ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    misnamed_key, misnamed_cert = _leaf(
        "kapture.example", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH, [x509.DNSName("kapture.example")]
    )
    pki = Pki(*(directory / name for name in ("ca.pem", "wrong-ca.pem", "server.pem", "server.key",
                                              "client-ca.pem", "client.pem", "client.key",
                                              "misnamed.pem", "misnamed.key")))  # fmt: skip
    for path, cert in ((pki.ca, ca_cert), (pki.wrong_ca, wrong_cert), (pki.server_cert, server_cert),
                       (pki.client_ca, client_ca_cert), (pki.client_cert, client_cert),
                       (pki.misnamed_cert, misnamed_cert)):  # fmt: skip
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for path, key in ((pki.server_key, server_key), (pki.client_key, client_key), (pki.misnamed_key, misnamed_key)):
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return pki


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign and crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, _validity(builder).sign(key, hashes.SHA256())


def _leaf(
    name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    usage: x509.ObjectIdentifier,
    alt_names: list[x509.GeneralName],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return key, _validity(builder).sign(ca_key, hashes.SHA256())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TinyProxy:
    """``tinyproxy -d`` on a free loopback port, with its own configuration and log in ``directory``.

    :param basic_auth: ``(user, password)`` the proxy requires (``Proxy-Authorization: Basic``).
    """

    def __init__(self, directory: Path, basic_auth: tuple[str, str] | None = None):
        binary = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/sbin:/usr/bin")
        if binary is None:  # fail, never skip: CI installs it (apt-get install tinyproxy)
            raise AssertionError("tinyproxy is not installed: apt-get install tinyproxy")
        self.binary = binary
        self.directory = directory
        self.basic_auth = basic_auth
        self.log = directory / "tinyproxy.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TinyProxy:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # another process may take the free port before tinyproxy binds it
            self.port = free_port()
            config = self.directory / "tinyproxy.conf"
            lines = [
                f"Port {self.port}",
                "Listen 127.0.0.1",
                "Timeout 30",
                f'LogFile "{self.log}"',
                "LogLevel Info",
                "MaxClients 50",
                "Allow 127.0.0.1",
                "DisableViaHeader Yes",
            ]
            if self.basic_auth:
                lines.append(f"BasicAuth {self.basic_auth[0]} {self.basic_auth[1]}")
            config.write_text("\n".join(lines) + "\n")
            self._process = subprocess.Popen(
                [self.binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_listening():
                return self
            self._stop()
        raise AssertionError(f"tinyproxy did not start; its log:\n{self.log_text()}")

    def _wait_listening(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()


class RecordingRelay:
    """A TCP relay on a free loopback port to ``target``; keeps every byte clients sent through it."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sent = bytearray()  # client -> target
        self.received_bytes = 0  # target -> client
        self.connections = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sent(self) -> bytes:
        """Everything clients sent to the target so far."""
        with self._lock:
            return bytes(self._sent)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            for source, sink, outgoing in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self._pump, args=(source, sink, outgoing), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, outgoing: bool) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if outgoing:
                        self._sent += data
                    else:
                        self.received_bytes += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pumping threads (close alone does not)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._accepting.join(timeout=5)
