"""Our own secrets are blanked in texts that came from outside, before those texts are cut."""

from __future__ import annotations

import base64

import pytest

from kapture_provider.exceptions import EXCERPT_LENGTH, SECRET_PIECE, Secrets, scrub
from kapture_provider.hooks.kapture import base_url_from_host

pytestmark = pytest.mark.unit

PASSWORD = "s3cret-Passw0rd!"
TOKEN = base64.b64encode(f"kapture-user:{PASSWORD}".encode()).decode()
SECRETS = Secrets((PASSWORD,), (TOKEN,))


def leaks(text: str) -> bool:
    """Whether ``text`` holds the password or any piece of the token that decodes to part of it."""
    if PASSWORD in text:
        return True
    return any(TOKEN[i : i + SECRET_PIECE] in text for i in range(len(TOKEN) - SECRET_PIECE + 1))


@pytest.mark.parametrize(
    "echo",
    [
        f"Authorization: Basic {TOKEN}",
        f"bad header {TOKEN[:20]}",  # a token cut short by a gateway
        f"x{TOKEN[7:30]}y",  # any piece, glued to other characters
        f"the password {PASSWORD} is wrong",
    ],
    ids=["whole", "prefix", "middle", "password"],
)
def test_echoed_secrets_are_blanked(echo: str) -> None:
    cleaned = SECRETS.redact(f"Invalid request: {echo} (ref 42)")

    assert not leaks(cleaned), cleaned
    assert cleaned.startswith("Invalid request: ") and cleaned.endswith("(ref 42)")


def test_text_without_secrets_is_unchanged() -> None:
    text = "Order Updated successfully ! customer 191696570 kapture-test.invalid"

    assert SECRETS.redact(text) == text


def test_the_cut_comes_after_the_cleaning() -> None:
    """A token starting near the cut would leave a decodable piece if the text were cut first."""
    message = "x" * (EXCERPT_LENGTH - 20) + f" Basic {TOKEN}"  # 12 characters of it before the cut

    cleaned = scrub(message, secrets=SECRETS)

    assert len(cleaned) <= EXCERPT_LENGTH
    assert not leaks(cleaned), cleaned


def test_a_host_with_credentials_is_refused_without_quoting_them() -> None:
    with pytest.raises(ValueError, match="Login") as caught:
        base_url_from_host(f"https://kapture-user:{PASSWORD}@acme.kapturecrm.com")

    assert PASSWORD not in str(caught.value) and "Password" in str(caught.value)
