"""pytest fixtures for the Kapture emulator (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kapture_provider.testing.emulator import KaptureEmulator


@pytest.fixture
def kapture_emulator() -> Iterator[KaptureEmulator]:
    """A running emulator on a free loopback port with default settings, stopped after the test."""
    with KaptureEmulator() as emulator:
        yield emulator


@pytest.fixture
def kapture_conn(kapture_emulator: KaptureEmulator, monkeypatch: pytest.MonkeyPatch) -> KaptureEmulator:
    """The ``kapture_emulator``, with ``AIRFLOW_CONN_KAPTURE_DEFAULT`` pointing at it for this test."""
    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", kapture_emulator.connection_json())
    return kapture_emulator
