"""The provider registers itself and the `kapture` connection form the way Airflow 3's UI reads it."""

from __future__ import annotations

import dataclasses
from importlib.metadata import entry_points

from kapture_provider import get_provider_info


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


def test_ui_connection_form_shows_the_kapture_fields() -> None:
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "kapture"]
    behaviour = meta.standard_fields
    assert behaviour is not None
    assert behaviour.host is not None and behaviour.host.title == "Kapture base URL or subdomain"
    assert behaviour.login is not None and behaviour.login.title == "User name"
    assert behaviour.password is not None and behaviour.password.title == "Password"
    # Port is shown: Airflow 3.3's Test button refuses a connection whose port is empty (it sends 0)
    assert behaviour.port is not None and not behaviour.port.hidden and behaviour.port.title == "Port"
    assert behaviour.url_schema is not None and behaviour.url_schema.hidden
    extras = meta.extra_fields or {}
    assert {"timeout", "connect_timeout", "max_retries", "allow_insecure_http"} <= set(extras)
    assert extras["timeout"]["schema"]["type"] == ["number", "null"]


def test_ui_connection_form_prefills_the_hooks_defaults() -> None:
    """Airflow 3.3's form saves every extra it shows; pre-filled with the hook's defaults, none is saved empty."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    from kapture_provider.hooks.kapture import KaptureSettings

    (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "kapture"]
    values = {name: field["value"] for name, field in (meta.extra_fields or {}).items()}
    defaults = {f.name: f.default for f in dataclasses.fields(KaptureSettings) if f.name in values}
    assert values == {**defaults, "allow_insecure_http": False}


def test_airflow_loads_the_kapture_page_plugin_with_default_settings() -> None:
    """Installed is enough: the ``airflow.plugins`` entry point is loaded whatever ``lazy_discover_providers`` says
    (a provider-info ``plugins`` entry is not, by default)."""
    from airflow import plugins_manager

    (plugin,) = [p for p in plugins_manager.get_plugin_info() if p["name"] == "kapture"]
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/kapture"]
    assert [(v["name"], v["url_route"], v["destination"]) for v in plugin["external_views"]] == [
        ("Kapture", "kapture", "nav")
    ]
