"""What the emulator answers with: a status, a body, headers, and how long to wait before sending it.

Kapture's behaviour and the control endpoints build these; the HTTP server writes them out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JSON = "application/json"
HTML = "text/html"


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer; ``reset`` drops the connection with a TCP RST instead of answering."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    reset: bool = False


def json_bytes(payload: Any) -> bytes:
    """Compact JSON, as Kapture sends it."""
    return json.dumps(payload, separators=(",", ":")).encode()


def json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, json_bytes(payload))


def failed(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """Kapture's failure body, ``{"message": ..., "status": "failed"}``."""
    return Reply(status, json_bytes({"message": message, "status": "failed"}), headers=headers)
