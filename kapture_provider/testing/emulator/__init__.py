"""The Kapture CRM API emulator: Kapture's order API in memory, with faults, behind ``http.server``.

``add-update`` (an upsert keyed by ``order_info.order_id``) and the read-only search, as Kapture
documents them; every request recorded; faults scripted or random, latency and a rate limit; plain
HTTP or TLS (and mutual TLS); inspected and changed from Python or, on loopback, under ``/_emulator/``.
"""

from kapture_provider.testing.emulator.faults import DEFAULT_FAULT_KINDS, Fault
from kapture_provider.testing.emulator.kapture import ADD_UPDATE_PATH, SEARCH_PATH, RecordedRequest
from kapture_provider.testing.emulator.kapture_emulator import KaptureEmulator

__all__ = ["ADD_UPDATE_PATH", "DEFAULT_FAULT_KINDS", "SEARCH_PATH", "Fault", "KaptureEmulator", "RecordedRequest"]
