"""What the benchmarks run against: the Kapture emulator in its own process, and SQLite warehouses.

Nothing here imports Airflow: this runs in the orchestrating process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from kapture_provider.testing import warehouse

WORK = Path(__file__).resolve().parent / ".work"
#: Every warehouse holds its orders' ``updated_at`` within this day; the benchmark interval is the day.
DAY_START = dt.datetime(2026, 11, 26)
DAY_END = DAY_START + dt.timedelta(days=1)
FIRST_ORDER_ID = 23_500_000
EMULATOR_USER, EMULATOR_PASSWORD = "kapture-user", "kapture-password"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


class EmulatorProcess:
    """``kapture-emulator`` in a child process (``--no-record-bodies``), inspected over HTTP."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        rate_limit: float | None = None,
        realtime: bool = False,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ):
        self.latency = latency
        self.rate_limit = rate_limit
        self.realtime = realtime
        self.tls = ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)] if tls_cert and tls_key else []
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EmulatorProcess:
        WORK.mkdir(parents=True, exist_ok=True)
        ready = WORK / f"emulator-{time.monotonic_ns()}.url"
        command = [
            str(Path(sys.executable).parent / "kapture-emulator"),
            "--port", "0", "--ready-file", str(ready), "--latency", str(self.latency), "--no-record-bodies",
        ]  # fmt: skip
        if self.rate_limit is not None:
            command += ["--rate-limit", str(self.rate_limit)]
        command += self.tls
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, preexec_fn=_realtime_policy if self.realtime else None
        )
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text().strip()):
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError("the Kapture emulator did not start")
            time.sleep(0.05)
        self.url = ready.read_text().strip()
        ready.unlink()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + "/_emulator/" + path,
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with _NO_PROXY.open(request, timeout=600) as response:
            return json.load(response)

    def reset(self) -> None:
        """Forget stored orders, recorded requests and the rate window."""
        self._call("reset", {})

    def configure(self, **changes: Any) -> None:
        """Change the emulator's settings (latency, rate_limit…) while it runs."""
        self._call("config", changes)
        if "latency" in changes:
            self.latency = changes["latency"]

    def stats(self) -> dict[str, Any]:
        return self._call("stats")  # type: ignore[no-any-return]

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Recorded API requests (``received_at``: epoch seconds, ``status``…), oldest first."""
        return self._call(f"requests?since={since}")  # type: ignore[no-any-return]

    def order_ids(self) -> set[str]:
        return set(self._call("orders"))

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the emulator process has used so far."""
        assert self._process is not None
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """The emulator process's own peak RSS (VmHWM)."""
        assert self._process is not None
        return status_kb("VmHWM", self._process.pid) / 1024


def _realtime_policy(priority: int = 10) -> None:
    """SCHED_RR for the emulator (before exec: its threads inherit it), as for the latency-bound clients."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except (OSError, AttributeError):
        pass


def status_kb(field: str, pid: int | str = "self") -> float:
    """A kB field (``VmRSS``, ``VmHWM``…) of ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return 0.0


def order_ids(count: int) -> list[str]:
    """The order ids ``warehouse.generate_orders`` gives the first ``count`` orders."""
    return [f"{FIRST_ORDER_ID + i:08d}" for i in range(count)]


def template_warehouse(count: int) -> Path:
    """A SQLite warehouse with ``count`` orders of ``generate_orders`` (seed 7), built once and kept.

    Every size draws the same order ids and customers in the same sequence, so a smaller warehouse
    holds the first orders of a larger one.
    """
    digest = hashlib.sha1(Path(warehouse.__file__).read_bytes()).hexdigest()[:8]
    path = WORK / "templates" / f"erp-{count}-{digest}.db"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    rows = warehouse.generate_orders(count, DAY_START, DAY_END, first_id=FIRST_ORDER_ID)
    with sqlite3.connect(partial) as conn:
        while batch := list(itertools.islice(rows, 50_000)):
            warehouse.insert_orders(conn, batch)
    conn.close()
    partial.rename(path)
    return path


def fresh_copy(template: Path, name: str = "run") -> Path:
    """A copy of ``template`` with no ledger yet, so every order of the run is really sent."""
    target = WORK / "runs" / f"{name}.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, target)
    return target
