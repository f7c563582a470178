"""``KaptureEmulator``: Kapture's API behaviour served over HTTP/1.1 on loopback, started and stopped here.

The behaviour, its settings and inspection come from :class:`KaptureApi`; this adds the server's
lifecycle and the values that point an Airflow connection at it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any
from urllib.parse import quote

from kapture_provider.testing.emulator.faults import DEFAULT_FAULT_KINDS, Fault
from kapture_provider.testing.emulator.kapture import Config, KaptureApi
from kapture_provider.testing.emulator.server import EmulatorServer, host_in_url, server_tls


class KaptureEmulator(KaptureApi):
    """An in-memory Kapture CRM API served over HTTP/1.1 on loopback, with fault injection.

    All settings are keyword arguments here and can be changed while running with :meth:`configure`
    (or ``POST /_emulator/config``). Use as a context manager, or call :meth:`start` / :meth:`stop`.

    ``tls_cert`` (a PEM certificate chain, its key in it or in ``tls_key``) makes it serve HTTPS;
    ``client_ca`` then requires every client to present a certificate issued by that CA.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "kapture-user",
        password: str = "kapture-password",
        token: str | None = None,
        failure_mode: str = "body",
        latency: float = 0.0,
        rate_limit: float | None = None,
        retry_after: int = 1,
        fault_rate: float = 0.0,
        fault_kinds: Iterable[Fault | str] = DEFAULT_FAULT_KINDS,
        seed: int | None = None,
        slow_seconds: float = 5.0,
        record_bodies: bool = True,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        client_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self._tls = server_tls(tls_cert, tls_key, client_ca)
        super().__init__(
            Config(
                username=username,
                password=password,
                token=token,
                failure_mode=failure_mode,
                latency=latency,
                rate_limit=rate_limit,
                retry_after=retry_after,
                fault_rate=fault_rate,
                fault_kinds=tuple(Fault(kind) for kind in fault_kinds),
                seed=seed,
                slow_seconds=slow_seconds,
                record_bodies=record_bodies,
            )
        )
        self._host = host
        self._port = port
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> KaptureEmulator:
        """Bind the port and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping.clear()
        server = EmulatorServer((self._host, self._port), self, self._tls, self._stopping)
        self._port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"kapture-emulator-{self._port}",
            daemon=True,
        )
        self._server = server
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open (keep-alive) connections and wake sleeping handlers."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> KaptureEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port the emulator listens on (known once started)."""
        if not self._port:
            raise RuntimeError("the emulator has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765`` (``https://`` when serving TLS)."""
        return f"{'https' if self._tls else 'http'}://{host_in_url(self._host)}:{self.port}"

    # -- connection values -------------------------------------------------------------------------

    def connection_json(self, **extra: Any) -> str:
        """A JSON value for ``AIRFLOW_CONN_<ID>`` pointing at this emulator."""
        config = self._config
        return json.dumps(
            {
                "conn_type": "kapture",
                "host": self.url,
                "login": config.username,
                "password": config.password,
                "extra": extra,
            }
        )

    def connection_uri(self, **extra: Any) -> str:
        """The same connection in Airflow's URI form (``host`` parses back to :attr:`url`)."""
        config = self._config
        scheme, _, address = self.url.partition("://")
        uri = (
            f"kapture://{scheme}://{quote(config.username, safe='')}:{quote(config.password, safe='')}"
            f"@{quote(address, safe='')}"
        )
        return f"{uri}?__extra__={quote(json.dumps(extra), safe='')}" if extra else uri
