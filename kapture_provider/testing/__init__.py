"""Test support for the Kapture provider: an emulator of the Kapture CRM API and pytest fixtures."""

from kapture_provider.testing.emulator import Fault, KaptureEmulator, RecordedRequest

__all__ = ["Fault", "KaptureEmulator", "RecordedRequest"]
