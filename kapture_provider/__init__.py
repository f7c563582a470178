"""Apache Airflow provider for Kapture CRM: keep Kapture's orders in step with ERP data."""

from __future__ import annotations

from typing import Any

from kapture_provider.hooks.connection_form import provider_connection_type

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "airflow-provider-kapture",
        "name": "Kapture CRM",
        "description": "Sync ERP orders into Kapture CRM: hook, operators and a local API emulator.",
        "versions": [__version__],
        "connection-types": [provider_connection_type()],
    }
