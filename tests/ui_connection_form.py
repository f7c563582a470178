"""Print, as JSON, the ``kapture`` connection form as the installed Airflow's own UI gets it.

Run in a fresh interpreter (``python tests/ui_connection_form.py``): the UI code of Airflow 3.0 and 3.1
loads the hooks' form widgets with stand-ins for wtforms, which only works in a process that has not
loaded them already.

* Airflow 2.11 (Flask AppBuilder UI): ``ProvidersManager().connection_form_widgets`` (the wtforms
  fields the connection form class is built from) and ``field_behaviours``, which the views hand to the
  page's JavaScript.
* Airflow 3.x (React UI): ``HookMetaService.hook_meta_data()``, behind ``GET /ui/connections/hook_meta``;
  3.0 and 3.1 build it from the hook's methods, 3.2 and later from the provider info's ``conn-fields``.

Output: ``{"source", "standard": {field: {"hidden", "label", "placeholder"}}, "extras": {name: {"label",
"description", "type", "format", "default"}}}``, the same shape for every version.
"""

from __future__ import annotations

import json
from typing import Any

from airflow import __version__ as airflow_version

STANDARD = ("host", "schema", "login", "password", "port", "extra")


def from_providers_manager() -> dict[str, Any]:
    """Airflow 2: the wtforms fields and the field behaviour the FAB connection form is built from."""
    from airflow.providers_manager import ProvidersManager
    from airflow.www.forms import create_connection_form_class

    manager = ProvidersManager()
    behaviour = manager.field_behaviours.get("kapture") or {}
    form_fields = set(vars(create_connection_form_class()))
    kinds = {"StringField": "string", "IntegerField": "integer", "BooleanField": "boolean", "PasswordField": "string"}
    extras = {}
    for key, info in manager.connection_form_widgets.items():
        if not key.startswith("extra__kapture__") or key not in form_fields:
            continue
        field = info.field
        extras[info.field_name] = {
            "label": field.args[0] if field.args else field.kwargs.get("label"),
            "description": field.kwargs.get("description"),
            "type": kinds.get(field.field_class.__name__, field.field_class.__name__),
            "format": "password" if info.is_sensitive else None,
            "default": field.kwargs.get("default"),
        }
    standard = {
        name: {
            "hidden": name in behaviour.get("hidden_fields", []),
            "label": behaviour.get("relabeling", {}).get(name),
            "placeholder": behaviour.get("placeholders", {}).get(name),
        }
        for name in STANDARD
    }
    return {"source": "ProvidersManager (FAB UI)", "standard": standard, "extras": extras}


def from_hook_meta_service() -> dict[str, Any]:
    """Airflow 3: what the React UI's connection form is rendered from."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    metas = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "kapture"]
    if not metas:
        return {"source": "HookMetaService", "standard": {}, "extras": {}}
    meta = metas[0].model_dump()
    fields = meta.get("standard_fields") or {}
    standard = {}
    for name in STANDARD:
        ui = fields.get("url_schema" if name == "schema" else name) or {}
        standard[name] = {
            "hidden": bool(ui.get("hidden")),
            "label": ui.get("title"),
            "placeholder": ui.get("placeholder"),
        }
    extras = {}
    for name, param in (meta.get("extra_fields") or {}).items():
        schema = param.get("schema", {})
        types = schema.get("type")
        extras[name] = {
            "label": schema.get("title"),
            "description": param.get("description") or schema.get("description"),
            "type": next((t for t in types if t != "null"), None) if isinstance(types, list) else types,
            "format": schema.get("format"),
            "default": param.get("value"),
        }
    return {"source": "HookMetaService (React UI)", "standard": standard, "extras": extras}


def main() -> None:
    form = from_providers_manager() if airflow_version.startswith("2.") else from_hook_meta_service()
    print(json.dumps({"airflow": airflow_version, **form}))


if __name__ == "__main__":
    main()
