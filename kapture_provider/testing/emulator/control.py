"""The ``/_emulator/`` inspection and control endpoints, and who may use them.

They need no credentials, so they answer loopback callers only, refuse what a web page could send
(cross-site requests, changes that are not JSON), never show a client's credentials or the configured
password, and show stored orders' values only to a caller with Kapture's credentials, as Kapture would.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Collection
from dataclasses import asdict
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, unquote

from kapture_provider.testing.emulator.answers import JSON, Reply, failed, json_reply
from kapture_provider.testing.emulator.kapture import KaptureApi, RecordedRequest

CONTROL_PREFIX = "/_emulator/"
HIDDEN = "***"
"""What is shown in place of a secret or a personal value."""
_SAME_SITE = frozenset({"same-origin", "none"})


def is_loopback(address: str) -> bool:
    """Whether a client address is on loopback (127.0.0.0/8, ::1, or IPv4-mapped 127.x)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def refusal(method: str, headers: Message, client_address: str, own_origins: Collection[str]) -> Reply | None:
    """Why a control request is refused (403 or 415), or None to serve it."""
    if not is_loopback(client_address):
        return failed(403, "The /_emulator/ endpoints answer loopback callers only")
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.strip().lower() not in _SAME_SITE:
        return failed(403, "Cross-site requests are refused")
    origin = headers.get("Origin")
    if origin is not None and origin.strip().lower() not in own_origins:
        return failed(403, "Requests from another origin are refused")
    if method == "POST" and headers.get_content_type() != JSON:
        return failed(415, "A change must be sent as application/json")
    return None


def hide_values(value: Any) -> Any:
    """The same JSON shape with every string and number hidden: which fields were sent, not their values."""
    if isinstance(value, dict):
        return {key: hide_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [hide_values(item) for item in value]
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return HIDDEN
    return value


def public_record(record: RecordedRequest) -> dict[str, Any]:
    """A recorded request as served over HTTP: whether its credentials were accepted, not what they were,
    and its body's fields without their values."""
    shown = asdict(record)
    del shown["authorized"]
    if record.authorization is not None:
        shown["authorization"] = "accepted" if record.authorized else "refused"
    shown["body"] = hide_values(record.body)
    return shown


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings as served over HTTP: the password and the token hidden."""
    return {**config, "password": HIDDEN, "token": None if config["token"] is None else HIDDEN}


def answer(api: KaptureApi, method: str, target: str, authorization: str | None, raw: bytes) -> Reply:
    """Serve one control request (``target`` under :data:`CONTROL_PREFIX`) that :func:`refusal` let through."""
    path, _, query = target.partition("?")
    name = path.removeprefix(CONTROL_PREFIX)
    try:
        if method == "GET":
            return _get(api, name, query, api.authorized(authorization))
        if method == "POST":
            return _post(api, name, raw)
    except (TypeError, ValueError, KeyError) as exc:
        return failed(400, f"{type(exc).__name__}: {exc}")
    return failed(405, "Method Not Allowed", (("Allow", "GET, POST"),))


def _get(api: KaptureApi, name: str, query: str, authorized: bool) -> Reply:
    """``authorized``: the request carries Kapture's credentials, so stored orders are shown whole."""
    payload: Any
    if name == "health":
        payload = {"status": "ok"}
    elif name == "stats":
        payload = api.stats()
    elif name == "config":
        payload = public_config(api.config)
    elif name == "orders":
        payload = api.orders if authorized else hide_values(api.orders)
    elif name == "requests":
        since = int(parse_qs(query).get("since", ["0"])[0])
        payload = [public_record(record) for record in api.requests_since(since)]
    elif name.startswith("orders/"):
        payload = api.stored_order(unquote(name.removeprefix("orders/")))
        if payload is None:
            return failed(404, "Order not found")
        if not authorized:
            payload["body"] = hide_values(payload["body"])
    else:
        return failed(404, "Not Found")
    return json_reply(payload)


def _post(api: KaptureApi, name: str, raw: bytes) -> Reply:
    if name not in ("reset", "script", "config"):
        return failed(404, "Not Found")
    payload = json.loads(raw or b"{}")
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    if name == "reset":
        api.reset()
        return json_reply({"status": "success"})
    if name == "config":
        api.configure(**payload)
        return json_reply(public_config(api.config))
    faults = payload["faults"]
    if not isinstance(faults, list):
        raise ValueError("faults must be a list")
    if payload.get("order_id") is None:
        api.script(*faults)
    else:
        api.script_for_order(payload["order_id"], *faults)
    return json_reply({"status": "success", "queued": len(faults)})
