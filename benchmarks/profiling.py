"""Where the client's CPU time goes: cProfile on every thread of a sync, timed in per-thread CPU time.

cProfile profiles only the thread that enables it, and its default clock is wall time, which a thread
waiting for the GIL keeps running. So the main thread gets one profiler and each sending thread its own
(around each ``OrderSync._send_queued`` call: an order's HTTP exchanges and ledger record), all timed
with ``time.thread_time``; the merged statistics attribute CPU time, inflated evenly by the
profiler's own overhead.
"""

from __future__ import annotations

import cProfile
import pstats
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from unittest import mock

from kapture_provider.sync.engine import OrderSync

ROOT = str(Path(__file__).resolve().parents[1]) + "/"
#: (category, test on "filename:function") — the first match wins.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("urllib3 (pool, request and response objects)", ("/urllib3/",)),
    ("http.client + email header parsing (stdlib)", ("/http/client.py", "/email/")),
    ("socket send/recv/poll (syscalls)", ("_socket.socket", "select.poll", "socket.py")),
    ("SQLite calls (warehouse read + ledger)", ("sqlite3",)),
    ("payload mapping + JSON encoding", ("kapture_provider/payload.py", "/json/", "json.")),
    ("sha256 hashing", ("_hashlib", "sha256")),
    ("sync engine + ledger (Python)", ("kapture_provider/sync/",)),
    ("KaptureHook, throttle, transport (Python)", ("kapture_provider/hooks/",)),
    ("threads, locks, queues", ("threading.py", "queue.py", "lock", "acquire")),
    ("typing/abc isinstance checks", ("typing.py", "abc", "isinstance")),
]


class ThreadProfiler:
    """Profiles the main thread, and each sending thread while it sends and records orders."""

    def __init__(self) -> None:
        self._profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()
        self._main = cProfile.Profile(time.thread_time)
        self._patch: Any = None

    def __enter__(self) -> ThreadProfiler:
        original = OrderSync._send_queued
        per_thread = threading.local()

        def profiled_send(engine: OrderSync, item: Any) -> None:
            profile = getattr(per_thread, "profile", None)
            if profile is None:  # this sending thread's first order
                profile = per_thread.profile = cProfile.Profile(time.thread_time)
                with self._lock:
                    self._profiles.append(profile)
            profile.enable()
            try:
                original(engine, item)
            finally:
                profile.disable()

        self._patch = mock.patch.object(OrderSync, "_send_queued", profiled_send)
        self._patch.start()
        self._main.enable()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._main.disable()
        self._patch.stop()

    def report(self, top: int = 15) -> dict[str, Any]:
        """Top functions by own and by cumulative CPU time, and the share of each category."""
        stats = pstats.Stats(self._main)
        for profile in self._profiles:
            stats.add(profile)
        table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
        total = sum(tt for _, _, tt, _, _ in table.values()) or 1e-9
        rows: list[dict[str, Any]] = [
            {"function": _name(key), "calls": nc, "own": tt / total, "cumulative": ct / total}
            for key, (_, nc, tt, ct, _) in table.items()
        ]
        by_own = sorted(rows, key=lambda r: float(r["own"]), reverse=True)
        by_cumulative = sorted(rows, key=lambda r: float(r["cumulative"]), reverse=True)
        groups: dict[str, float] = {}
        for key, (_, _, tt, _, callers) in table.items():
            for category, share in _attribute(key, tt, callers):
                groups[category] = groups.get(category, 0.0) + share / total
        return {
            "threads": 1 + len(self._profiles),
            "profiled_cpu_s": total,
            "by_own": by_own[:top],
            "by_cumulative": by_cumulative[: top + 5],
            "categories": sorted(groups.items(), key=lambda kv: kv[1], reverse=True),
        }


def _name(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    for marker in ("site-packages/", "/lib/python3.11/", ROOT):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{function} ({filename}:{line})"


def _attribute(key: tuple[str, int, str], own: float, callers: dict[Any, Any]) -> list[tuple[str, float]]:
    """A function's own time by category; a builtin's (``str.lower``…) goes to its callers' categories."""
    category = _category(key)
    if key[0] != "~" or category not in ("other", "typing/abc isinstance checks") or not callers:
        return [(category, own)]
    edges = [(_category(caller), edge[2]) for caller, edge in callers.items()]
    edge_total = sum(t for _, t in edges) or 1e-12
    return [(name, own * t / edge_total) for name, t in edges]


def _category(key: tuple[str, int, str]) -> str:
    text = f"{key[0]}:{key[2]}"
    for name, needles in CATEGORIES:
        if any(needle in text for needle in needles):
            return name
    return "other"
