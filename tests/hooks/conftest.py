"""Fixtures of the network tests: a throw-away PKI, and an environment without the machine's proxy or CA
settings."""

from __future__ import annotations

import pytest
from network_kit import Pki, make_pki

#: The variables that choose a proxy or a CA bundle (kapture_provider.hooks.network reads them).
NETWORK_ENVIRONMENT = (
    "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE",
)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA setting of the machine running the tests leaks in."""
    for name in NETWORK_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
