"""The ``kapture`` connection form, defined once.

Airflow 3.2 and later read the form from the provider info (``conn-fields`` and ``ui-field-behaviour``,
see :func:`provider_connection_type`); Airflow 2.11 to 3.1 ask the hook (``get_ui_field_behaviour()`` and
``get_connection_form_widgets()``, see :func:`ui_field_behaviour` and :func:`form_widgets`). Both are
generated from :data:`EXTRA_FIELDS` and the standard-field settings below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HOOK_CLASS = "kapture_provider.hooks.kapture.KaptureHook"
CONN_TYPE = "kapture"
HOOK_NAME = "Kapture CRM"
# Port stays visible: Airflow 3.3's Test button sends 0 for a connection without a port and then refuses
# to test it ("The host or port to test differs…"); with the port filled in, the Test button works.
# The "Extra Fields JSON" section cannot be hidden (Airflow 3.2+ always shows it); every extra has a field.
HIDDEN_FIELDS = ["schema", "extra"]
RELABELING = {"host": "Kapture base URL or subdomain", "port": "Port", "login": "User name", "password": "Password"}
PLACEHOLDERS = {
    "host": "acme  or  https://acme.kapturecrm.com",
    "port": "443 (fill it in: Airflow's Test button needs it)",
    "login": "Kapture user name (leave empty if Password is a ready-made token)",
    "password": "Kapture password, or the Basic token when User name is empty",
}


@dataclass(frozen=True)
class ExtraField:
    """One connection extra shown in the form."""

    name: str
    label: str
    description: str
    kind: str  # "number", "integer", "boolean" or "string"
    default: Any  # the hook's default, pre-filled in the form (so that it never saves empty extras)
    minimum: float | None = None
    secret: bool = False  # shown masked, and masked in logs

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": [self.kind, "null"], "default": self.default}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.secret:
            schema["format"] = "password"
        return schema


EXTRA_FIELDS: tuple[ExtraField, ...] = (
    ExtraField(
        "timeout", "Read timeout (seconds)", "How long to wait for Kapture's answer to one request.",
        "number", 30.0, minimum=1,
    ),
    ExtraField(
        "connect_timeout", "Connect timeout (seconds)", "How long to wait for a TCP/TLS connection.",
        "number", 10.0, minimum=1,
    ),
    ExtraField(
        "max_retries", "Max retries", "Retries of a transient failure (429, 5xx, timeouts, resets).",
        "integer", 5, minimum=0,
    ),
    ExtraField(
        "backoff_base", "Backoff base (seconds)",
        "First retry waits up to this long, doubling each time (full jitter).", "number", 0.5, minimum=0,
    ),
    ExtraField(
        "backoff_max", "Backoff cap (seconds)", "Longest wait between two retries.", "number", 30.0, minimum=0,
    ),
    ExtraField(
        "pool_size", "Connection pool size", "Keep-alive connections kept open to Kapture.",
        "integer", 32, minimum=1,
    ),
    ExtraField(
        "allow_insecure_http", "Allow plain http:// to non-loopback hosts",
        "Off by default: credentials would travel unencrypted.", "boolean", False,
    ),
    ExtraField(
        "proxy", "Proxy URL",
        "http://[user:password@]host:port of the egress proxy (HTTPS goes through it in a CONNECT tunnel). "
        "Leave empty to use HTTPS_PROXY and NO_PROXY from the workers' environment; false: connect directly.",
        "string", None, secret=True,
    ),
    ExtraField(
        "ca_bundle", "CA bundle (PEM file)",
        "Path on the workers to the PEM file of the CAs to trust (an internal CA, a TLS-inspecting proxy's). "
        "Empty: REQUESTS_CA_BUNDLE or SSL_CERT_FILE, else certifi's bundle.",
        "string", None,
    ),
    ExtraField(
        "client_cert", "Client certificate (PEM file)",
        "Path to a client certificate for mutual TLS (its key too, unless Client key is set).", "string", None,
    ),
    ExtraField(
        "client_key", "Client key (PEM file)", "Path to the client certificate's private key.", "string", None,
    ),
    ExtraField(
        "client_key_password", "Client key password", "Only if the client key is encrypted.", "string", None,
        secret=True,
    ),
)  # fmt: skip


def conn_fields() -> dict[str, Any]:
    """The extras as provider-info ``conn-fields`` (JSON schema per field)."""
    return {f.name: {"label": f.label, "description": f.description, "schema": f.json_schema()} for f in EXTRA_FIELDS}


def provider_connection_type() -> dict[str, Any]:
    """The ``connection-types`` entry of the provider info (read by Airflow 3.2 and later)."""
    return {
        "connection-type": CONN_TYPE,
        "hook-class-name": HOOK_CLASS,
        "hook-name": HOOK_NAME,
        "ui-field-behaviour": {
            "hidden-fields": list(HIDDEN_FIELDS),
            "relabeling": dict(RELABELING),
            "placeholders": dict(PLACEHOLDERS),
        },
        "conn-fields": conn_fields(),
    }


def ui_field_behaviour() -> dict[str, Any]:
    """The standard fields' behaviour as ``BaseHook.get_ui_field_behaviour()`` returns it (Airflow < 3.2)."""
    return {"hidden_fields": list(HIDDEN_FIELDS), "relabeling": dict(RELABELING), "placeholders": dict(PLACEHOLDERS)}


def form_widgets() -> dict[str, Any]:
    """The extras as wtforms fields, as ``BaseHook.get_connection_form_widgets()`` returns them (Airflow < 3.2).

    Airflow 3.0 and 3.1 read these with stand-ins for wtforms' field classes (their React UI needs the
    field types only); Airflow 3.0 does so only when wtforms is installed, hence the dependency on it.
    Flask AppBuilder's Bootstrap widgets are used where it is installed (Airflow 2's UI).
    """
    from wtforms import BooleanField, IntegerField, PasswordField, StringField
    from wtforms.validators import NumberRange, Optional

    try:
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
    except ImportError:  # Airflow 3 without the FAB provider: no Flask UI to style
        text: dict[str, Any] = {}
        password: dict[str, Any] = {}
    else:
        text, password = {"widget": BS3TextFieldWidget()}, {"widget": BS3PasswordFieldWidget()}

    widgets: dict[str, Any] = {}
    for f in EXTRA_FIELDS:
        validators = [Optional()] + ([NumberRange(min=f.minimum)] if f.minimum is not None else [])
        common = {"description": f.description, "default": f.default}
        if f.kind == "boolean":
            widgets[f.name] = BooleanField(f.label, **common)
        elif f.secret:
            widgets[f.name] = PasswordField(f.label, **common, **password)
        elif f.kind == "integer":
            widgets[f.name] = IntegerField(f.label, validators=validators, **common, **text)
        else:  # text, numbers too: wtforms has no float field Airflow's form accepts
            default = None if f.default is None else str(f.default)  # unset stays unset, not "None"
            widgets[f.name] = StringField(f.label, **{**common, "default": default}, **text)
    return widgets
