"""The provider registers itself, and the ``kapture`` connection form reaches the installed Airflow's own UI.

The form is defined once (``kapture_provider/hooks/connection_form.py``); each Airflow reads it its own
way (provider info from 3.2 on, the hook's methods before). ``tests/ui_connection_form.py`` reads it back
as that version's UI gets it, in a fresh interpreter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from kapture_provider import get_provider_info
from kapture_provider.compat import AIRFLOW_V_3_1_PLUS, AIRFLOW_V_3_2_PLUS
from kapture_provider.hooks import connection_form

pytestmark = pytest.mark.unit

UI_PROBE = Path(__file__).resolve().parent / "ui_connection_form.py"


def test_entry_point_names_the_distribution() -> None:
    (entry,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("kapture_provider")]
    info = entry.load()()
    assert info["package-name"] == "airflow-provider-kapture"
    assert info == get_provider_info()


def test_airflow_lists_the_provider_and_its_hook() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-kapture" in manager.providers
    hook = manager.hooks["kapture"]
    assert hook is not None
    assert hook.hook_class_name == "kapture_provider.hooks.kapture.KaptureHook"
    assert hook.connection_id_attribute_name == "kapture_conn_id"


@pytest.fixture(scope="module")
def ui_form() -> dict[str, Any]:
    """The ``kapture`` form as this Airflow's UI gets it."""
    proc = subprocess.run(
        [sys.executable, str(UI_PROBE)], env=os.environ.copy(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_ui_form_relabels_and_hides_the_standard_fields(ui_form: dict[str, Any]) -> None:
    standard = ui_form["standard"]
    for name, label in connection_form.RELABELING.items():
        assert standard[name]["label"] == label, name
        assert not standard[name]["hidden"], name
    for name, placeholder in connection_form.PLACEHOLDERS.items():
        assert standard[name]["placeholder"] == placeholder, name
    # Port is shown: Airflow 3.3's Test button refuses a connection whose port is empty (it sends 0)
    assert not standard["port"]["hidden"]
    assert standard["schema"]["hidden"]


def test_ui_form_shows_every_extra_with_its_label_and_type(ui_form: dict[str, Any]) -> None:
    extras = ui_form["extras"]
    assert set(extras) == {f.name for f in connection_form.EXTRA_FIELDS}, ui_form["source"]
    for field in connection_form.EXTRA_FIELDS:
        shown = extras[field.name]
        assert shown["label"] == field.label, field.name
        assert shown["description"] == field.description, field.name
        # before 3.2 the form is built from wtforms fields, which have no float: numbers are typed as text
        expected = "string" if field.kind == "number" and not AIRFLOW_V_3_2_PLUS else field.kind
        assert shown["type"] == expected, field.name
        assert (shown["format"] == "password") == field.secret, field.name


def test_ui_form_prefills_the_hooks_defaults(ui_form: dict[str, Any]) -> None:
    """Airflow 3.3's form saves every extra it shows; pre-filled with the hook's defaults, none is saved empty."""
    from kapture_provider.hooks.kapture import KaptureSettings

    extras = ui_form["extras"]
    shown = {name: field["default"] for name, field in extras.items()}
    defaults = {f.name: f.default for f in dataclasses.fields(KaptureSettings) if f.name in extras}
    unset = {"proxy", "ca_bundle", "client_cert", "client_key", "client_key_password"}  # the environment's, or none
    expected = {**defaults, "allow_insecure_http": False, **dict.fromkeys(unset)}
    if not AIRFLOW_V_3_2_PLUS:  # number fields are text fields there: their defaults are text too
        kinds = {f.name: f.kind for f in connection_form.EXTRA_FIELDS}
        expected = {name: str(value) if kinds[name] == "number" else value for name, value in expected.items()}
    assert shown == expected


@pytest.mark.skipif(
    not AIRFLOW_V_3_1_PLUS, reason="UI plugins with fastapi_apps and external_views exist from Airflow 3.1"
)
def test_airflow_loads_the_kapture_page_plugin_with_default_settings() -> None:
    """Installed is enough: the ``airflow.plugins`` entry point is loaded whatever ``lazy_discover_providers`` says
    (a provider-info ``plugins`` entry is not, by default)."""
    from airflow import plugins_manager

    (plugin,) = [p for p in plugins_manager.get_plugin_info() if p["name"] == "kapture"]
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/kapture"]
    assert [(v["name"], v["url_route"], v["destination"]) for v in plugin["external_views"]] == [
        ("Kapture", "kapture", "nav")
    ]
