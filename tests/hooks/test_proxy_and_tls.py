"""KaptureHook behind a real forward proxy and over TLS with a private CA.

Real parts only: Debian's tinyproxy on loopback (its own configuration, started here), the Kapture
emulator serving HTTPS with certificates generated for the test, and a recording TCP relay in front of
tinyproxy that keeps every byte the hook sent to the proxy. The relay is what proves the proxy never
saw the Authorization header or the body: the plain-http control test shows the same checks catch
them when they do go through in the clear.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from network_kit import Pki, RecordingRelay, TinyProxy

from kapture_provider.exceptions import Cause, KaptureConnectionError
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.sync.engine import OrderSync
from kapture_provider.testing.emulator import KaptureEmulator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_environment")]

CONN_ID = "kapture_network_test"
CANARY = "tunnel-canary-7731"
CUSTOMER = "Proxima Watcher"
ORDER: dict[str, Any] = {
    "customer_info": {"customer_name": CUSTOMER, "phone": "9380491257"},
    "order_info": {"order_id": "N-42", "remarks": CANARY},
}
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "max_retries": 3}


@pytest.fixture
def tls_emulator(pki: Pki) -> Iterator[KaptureEmulator]:
    with KaptureEmulator(tls_cert=pki.server_cert, tls_key=pki.server_key) as emulator:
        yield emulator


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    with TinyProxy(tmp_path / "tinyproxy") as running:
        yield running


@pytest.fixture
def relay(proxy: TinyProxy) -> Iterator[RecordingRelay]:
    """The address the hook is told is the proxy: it records, then forwards to tinyproxy."""
    recording = RecordingRelay(("127.0.0.1", proxy.port))
    yield recording
    recording.close()


@pytest.fixture
def make_hook(kapture_conn_env: Callable[..., str]) -> Iterator[Callable[..., KaptureHook]]:
    """Factory: a hook on a connection to ``emulator`` with these extras."""
    hooks: list[KaptureHook] = []

    def make(emulator: KaptureEmulator, **extra: Any) -> KaptureHook:
        config = emulator.config
        kapture_conn_env(
            CONN_ID, host=emulator.url, login=config["username"], password=config["password"], extra={**FAST, **extra}
        )
        hook = KaptureHook(CONN_ID)
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


def kapture_secrets(emulator: KaptureEmulator) -> list[bytes]:
    config = emulator.config
    token = base64.b64encode(f"{config['username']}:{config['password']}".encode())
    return [token, config["password"].encode()]


def assert_tunnelled(relay: RecordingRelay, proxy: TinyProxy, emulator: KaptureEmulator) -> None:
    """The proxy got a CONNECT to the emulator and then only TLS records: no credentials, no body text."""
    sent = relay.sent
    connect, _, tunnelled = sent.partition(b"\r\n\r\n")
    assert connect.startswith(b"CONNECT 127.0.0.1:%d HTTP/1." % emulator.port), sent[:200]
    assert tunnelled[:1] == b"\x16"  # a TLS handshake record follows the CONNECT: the rest is encrypted
    assert len(tunnelled) > len(json.dumps(ORDER))  # the request went through the tunnel, not elsewhere
    assert b"\r\nauthorization:" not in sent.lower()
    for secret in [*kapture_secrets(emulator), CANARY.encode(), CUSTOMER.encode(), b"N-42", b"add-update"]:
        assert secret not in sent
    assert f"CONNECT 127.0.0.1:{emulator.port}" in proxy.log_text()


def assert_delivered(emulator: KaptureEmulator) -> None:
    (request,) = emulator.requests
    assert request.stored and request.body == ORDER
    assert emulator.orders == {"N-42": ORDER}


# -- through the proxy ------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_https_goes_through_the_environment_proxy_with_the_ca_bundle_extra(
    tls_emulator: KaptureEmulator,
    relay: RecordingRelay,
    proxy: TinyProxy,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, relay.url)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # for http:// hosts only: never used here
    hook = make_hook(tls_emulator, ca_bundle=str(pki.ca))

    assert hook.update_order(ORDER)["status"] == "success"

    assert_delivered(tls_emulator)
    assert_tunnelled(relay, proxy, tls_emulator)
    assert hook.settings.proxy is not None and hook.settings.proxy.source == variable


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"])
def test_https_goes_through_the_proxy_extra_with_the_ca_from_the_environment(
    tls_emulator: KaptureEmulator,
    relay: RecordingRelay,
    proxy: TinyProxy,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, str(pki.ca))
    hook = make_hook(tls_emulator, proxy=relay.url.removeprefix("http://"))  # no scheme: http://, as curl

    assert hook.update_order(ORDER)["status"] == "success"

    assert_delivered(tls_emulator)
    assert_tunnelled(relay, proxy, tls_emulator)
    assert hook.settings.trust is not None and hook.settings.trust.source == variable


def test_plain_http_through_the_proxy_is_forwarded_in_the_clear(
    kapture_emulator: KaptureEmulator,
    relay: RecordingRelay,
    proxy: TinyProxy,
    make_hook: Callable[..., KaptureHook],
) -> None:
    """The control for the tunnel tests: without TLS the relay does see the header and the body."""
    hook = make_hook(kapture_emulator, proxy=relay.url)  # an explicit proxy: the environment's is not taken

    assert hook.update_order(ORDER)["status"] == "success"

    assert_delivered(kapture_emulator)
    sent = relay.sent
    assert sent.startswith(b"POST http://127.0.0.1:%d/ms/customer/order/api/v1/add-update " % kapture_emulator.port)
    assert b"\r\nAuthorization: Basic " + kapture_secrets(kapture_emulator)[0] + b"\r\n" in sent
    assert CANARY.encode() in sent and CUSTOMER.encode() in sent
    assert f"POST http://127.0.0.1:{kapture_emulator.port}" in proxy.log_text()


def test_plain_http_to_loopback_never_takes_the_environments_proxy(
    kapture_emulator: KaptureEmulator,
    relay: RecordingRelay,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker with http_proxy set runs the emulator: the proxy would get the credentials in clear."""
    monkeypatch.setenv("HTTP_PROXY", relay.url)
    monkeypatch.setenv("ALL_PROXY", relay.url)
    hook = make_hook(kapture_emulator)

    assert hook.update_order(ORDER)["status"] == "success"

    assert_delivered(kapture_emulator)
    assert relay.connections == 0 and relay.sent == b""


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "localhost, 127.0.0.1:{port}", "*"])
def test_no_proxy_goes_direct(
    tls_emulator: KaptureEmulator,
    relay: RecordingRelay,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", relay.url)
    monkeypatch.setenv("NO_PROXY", no_proxy.format(port=tls_emulator.port))
    hook = make_hook(tls_emulator, ca_bundle=str(pki.ca))

    assert hook.update_order(ORDER)["status"] == "success"

    assert_delivered(tls_emulator)
    assert hook.settings.proxy is None
    assert relay.connections == 0 and relay.sent == b""


def test_no_proxy_for_another_host_still_uses_the_proxy(
    tls_emulator: KaptureEmulator,
    relay: RecordingRelay,
    proxy: TinyProxy,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", relay.url)
    monkeypatch.setenv("NO_PROXY", f"127.0.0.2,10.0.0.0/8,localhost,127.0.0.1:{tls_emulator.port + 1}")
    hook = make_hook(tls_emulator, ca_bundle=str(pki.ca))

    assert hook.update_order(ORDER)["status"] == "success"

    assert_tunnelled(relay, proxy, tls_emulator)


@pytest.mark.parametrize("direct", ["", False, "false"])
def test_proxy_extra_empty_or_false_connects_directly_whatever_the_environment(
    tls_emulator: KaptureEmulator,
    relay: RecordingRelay,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
    direct: Any,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", relay.url)
    hook = make_hook(tls_emulator, ca_bundle=str(pki.ca), proxy=direct)

    assert hook.update_order(ORDER)["status"] == "success"

    assert_delivered(tls_emulator)
    assert relay.connections == 0


def test_lower_case_proxy_variables_win_over_upper_case(
    tls_emulator: KaptureEmulator,
    relay: RecordingRelay,
    proxy: TinyProxy,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("https_proxy", relay.url)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there
    hook = make_hook(tls_emulator, ca_bundle=str(pki.ca))

    assert hook.update_order(ORDER)["status"] == "success"

    assert_tunnelled(relay, proxy, tls_emulator)


def test_a_socks_proxy_is_refused_with_a_clear_error(
    tls_emulator: KaptureEmulator, make_hook: Callable[..., KaptureHook]
) -> None:
    from kapture_provider.compat import AirflowFailException

    hook = make_hook(tls_emulator, proxy="socks5://etl:pw@proxy.corp:1080")

    with pytest.raises(AirflowFailException, match=r"the connection extra 'proxy': a socks5:// proxy is not supported"):
        hook.check_settings()
    assert tls_emulator.requests == []


def test_connection_form_offers_the_network_extras_with_secrets_masked() -> None:
    from kapture_provider import get_provider_info

    (connection_type,) = get_provider_info()["connection-types"]
    fields = connection_type["conn-fields"]
    assert {"proxy", "ca_bundle", "client_cert", "client_key", "client_key_password"} <= set(fields)
    secret = {name for name, field in fields.items() if field["schema"].get("format") == "password"}
    assert {"proxy", "client_key_password"} <= secret  # a proxy URL may hold the proxy's password
    assert not {"ca_bundle", "client_cert", "client_key"} & secret  # paths to files, not secrets


def test_proxy_extra_overrides_the_environment(
    tls_emulator: KaptureEmulator,
    relay: RecordingRelay,
    proxy: TinyProxy,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there
    hook = make_hook(tls_emulator, ca_bundle=str(pki.ca), proxy=relay.url)

    assert hook.update_order(ORDER)["status"] == "success"

    assert_tunnelled(relay, proxy, tls_emulator)
    assert hook.settings.proxy is not None and hook.settings.proxy.source == "the connection extra 'proxy'"


# -- proxy credentials ------------------------------------------------------------------------------


PROXY_USER, PROXY_PASSWORD = "egress-robot", "pr0xy-s3cret-4411"


@pytest.fixture
def authenticating_proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    with TinyProxy(tmp_path / "tinyproxy-auth", basic_auth=(PROXY_USER, PROXY_PASSWORD)) as running:
        yield running


def test_proxy_credentials_open_the_tunnel_and_stay_masked(
    tls_emulator: KaptureEmulator,
    authenticating_proxy: TinyProxy,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kapture_provider.compat import redact

    relay = RecordingRelay(("127.0.0.1", authenticating_proxy.port))
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{relay.port}")
        hook = make_hook(tls_emulator, ca_bundle=str(pki.ca))

        assert hook.update_order(ORDER)["status"] == "success"

        assert_tunnelled(relay, authenticating_proxy, tls_emulator)
        proxy_token = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode())
        assert b"\r\nProxy-Authorization: Basic " + proxy_token in relay.sent  # the proxy's own, on the CONNECT
    finally:
        relay.close()
    settings = hook.settings
    assert settings.proxy is not None
    assert settings.proxy.url == f"http://127.0.0.1:{relay.port}"
    for text in (repr(settings), str(settings.proxy), hook.transport.describe_route()):
        assert PROXY_PASSWORD not in text and proxy_token.decode() not in text
    assert PROXY_PASSWORD not in redact(f"proxy password {PROXY_PASSWORD}")
    assert proxy_token.decode() not in redact(f"Proxy-Authorization: Basic {proxy_token.decode()}")


def test_plain_http_forwarded_through_a_proxy_that_wants_credentials(
    kapture_emulator: KaptureEmulator,
    authenticating_proxy: TinyProxy,
    make_hook: Callable[..., KaptureHook],
) -> None:
    """No tunnel, so the proxy's credentials go with each forwarded request."""
    hook = make_hook(
        kapture_emulator, proxy=f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{authenticating_proxy.port}"
    )

    assert hook.update_order(ORDER)["status"] == "success"

    assert_delivered(kapture_emulator)
    assert f"POST http://127.0.0.1:{kapture_emulator.port}" in authenticating_proxy.log_text()


def test_proxy_refusing_the_credentials_fails_at_once_without_them_in_the_text(
    tls_emulator: KaptureEmulator,
    authenticating_proxy: TinyProxy,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
) -> None:
    wrong = "not-the-proxy-password"
    url = f"http://{PROXY_USER}:{wrong}@127.0.0.1:{authenticating_proxy.port}"
    hook = make_hook(tls_emulator, ca_bundle=str(pki.ca), proxy=url)

    with pytest.raises(KaptureConnectionError) as caught:
        hook.update_order(ORDER)

    error = caught.value
    assert (error.cause, error.host) == (Cause.PROXY, f"127.0.0.1:{authenticating_proxy.port}")
    assert "HTTP 401" in error.message and "refused its credentials" in error.message  # tinyproxy's CONNECT answer
    assert not error.retryable and hook.requests_sent == 1  # not retried
    assert wrong not in f"{error} {error!r} {hook.settings!r}"
    assert tls_emulator.requests == []


# -- trust ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "through-proxy"])
def test_wrong_ca_fails_at_once_naming_ca_bundle(
    tls_emulator: KaptureEmulator,
    relay: RecordingRelay,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    through_proxy: bool,
) -> None:
    hook = make_hook(
        tls_emulator, ca_bundle=str(pki.wrong_ca), max_retries=5, **({"proxy": relay.url} if through_proxy else {})
    )

    with pytest.raises(KaptureConnectionError) as caught:
        hook.update_order(ORDER)

    error = caught.value
    assert (error.cause, error.host, error.order_id) == (Cause.TLS, f"127.0.0.1:{tls_emulator.port}", "N-42")
    assert "ca_bundle" in error.message and str(pki.wrong_ca) in error.message
    assert "not trusted" in error.message
    assert not error.retryable
    assert hook.requests_sent == 1  # one attempt, although max_retries is 5
    assert tls_emulator.requests == []  # the handshake failed before anything was sent
    assert relay.connections == (1 if through_proxy else 0)


def test_certifi_alone_does_not_trust_a_private_ca(
    tls_emulator: KaptureEmulator, make_hook: Callable[..., KaptureHook]
) -> None:
    hook = make_hook(tls_emulator)

    with pytest.raises(KaptureConnectionError, match=r"certifi's CA bundle.*set the connection extra ca_bundle"):
        hook.update_order(ORDER)
    ok, message = hook.test_connection()

    assert tls_emulator.requests == []
    assert not ok
    assert message.startswith(f"the TLS certificate of 127.0.0.1:{tls_emulator.port} is not trusted")
    assert "set the connection extra ca_bundle" in message and message.count("not trusted") == 1


def test_a_certificate_for_another_host_name_says_so(make_hook: Callable[..., KaptureHook], pki: Pki) -> None:
    """Trusted, but issued for kapture.example: the Host is what to check, not the CA bundle."""
    with KaptureEmulator(tls_cert=pki.misnamed_cert, tls_key=pki.misnamed_key) as emulator:
        hook = make_hook(emulator, ca_bundle=str(pki.ca))

        ok, message = hook.test_connection()

        assert emulator.requests == []
    assert not ok
    assert message.startswith(f"the TLS certificate of 127.0.0.1:{emulator.port} is for another host name")
    assert "check the connection's Host" in message and "ca_bundle" not in message


def test_unreadable_ca_bundle_is_a_settings_error(
    tls_emulator: KaptureEmulator, make_hook: Callable[..., KaptureHook], tmp_path: Path
) -> None:
    from kapture_provider.compat import AirflowFailException

    missing = tmp_path / "no-such-ca.pem"
    hook = make_hook(tls_emulator, ca_bundle=str(missing))

    with pytest.raises(AirflowFailException, match=f"cannot use the CA bundle {missing}.*ca_bundle"):
        hook.check_settings()
    ok, message = hook.test_connection()
    assert not ok and str(missing) in message


def test_a_sync_stops_at_an_untrusted_certificate(
    tls_emulator: KaptureEmulator, pki: Pki, make_hook: Callable[..., KaptureHook]
) -> None:
    """Every request would fail the same way: the run stops instead of failing each order in turn."""
    hook = make_hook(tls_emulator, ca_bundle=str(pki.wrong_ca))
    columns = ["order_id", "customer_name"]
    rows = [(f"S-{n}", f"Customer {n}") for n in range(200)]

    with pytest.raises(KaptureConnectionError, match="ca_bundle"):
        OrderSync(hook, None, max_concurrency=4).run(columns, [rows])

    assert hook.requests_sent <= 4  # at most one request per sending thread, then the run stopped
    assert tls_emulator.requests == []


# -- mutual TLS -------------------------------------------------------------------------------------


@pytest.fixture
def mtls_emulator(pki: Pki) -> Iterator[KaptureEmulator]:
    with KaptureEmulator(tls_cert=pki.server_cert, tls_key=pki.server_key, client_ca=pki.client_ca) as emulator:
        yield emulator


def test_mutual_tls_with_a_client_certificate(
    mtls_emulator: KaptureEmulator, pki: Pki, make_hook: Callable[..., KaptureHook]
) -> None:
    hook = make_hook(
        mtls_emulator, ca_bundle=str(pki.ca), client_cert=str(pki.client_cert), client_key=str(pki.client_key)
    )

    assert hook.update_order(ORDER)["status"] == "success"

    assert_delivered(mtls_emulator)


def test_mutual_tls_without_a_client_certificate_fails_clearly(
    mtls_emulator: KaptureEmulator, pki: Pki, make_hook: Callable[..., KaptureHook]
) -> None:
    hook = make_hook(mtls_emulator, ca_bundle=str(pki.ca), max_retries=5)

    with pytest.raises(KaptureConnectionError) as caught:
        hook.update_order(ORDER)

    error = caught.value
    assert error.cause == Cause.TLS and error.host == f"127.0.0.1:{mtls_emulator.port}"
    assert "client_cert" in error.message and "no client certificate" in error.message
    assert hook.requests_sent == 1
    assert mtls_emulator.requests == [] and mtls_emulator.orders == {}


def test_client_certificate_from_another_ca_is_refused(
    mtls_emulator: KaptureEmulator, pki: Pki, make_hook: Callable[..., KaptureHook]
) -> None:
    # the server certificate is no client certificate of the client CA: the server must refuse it
    hook = make_hook(
        mtls_emulator, ca_bundle=str(pki.ca), client_cert=str(pki.server_cert), client_key=str(pki.server_key)
    )

    with pytest.raises(KaptureConnectionError, match=f"client certificate {pki.server_cert}"):
        hook.update_order(ORDER)

    assert mtls_emulator.requests == []


def test_test_connection_names_the_proxy_it_went_through(
    tls_emulator: KaptureEmulator,
    relay: RecordingRelay,
    pki: Pki,
    make_hook: Callable[..., KaptureHook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", relay.url)
    hook = make_hook(tls_emulator, ca_bundle=str(pki.ca))

    ok, message = hook.test_connection()

    assert ok, message
    assert message == (
        f"Connected to Kapture at {tls_emulator.url} through proxy {relay.url} (from HTTPS_PROXY); "
        "the credentials were accepted"
    )
    assert relay.connections == 1
