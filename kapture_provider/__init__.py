"""Apache Airflow provider for Kapture CRM: keep Kapture's orders in step with ERP data."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "airflow-provider-kapture",
        "name": "Kapture CRM",
        "description": "Sync ERP orders into Kapture CRM: hook, operators and a local API emulator.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "kapture",
                "hook-class-name": "kapture_provider.hooks.kapture.KaptureHook",
                "hook-name": "Kapture CRM",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {
                        "host": "Kapture base URL or subdomain",
                        "login": "User name",
                        "password": "Password",
                    },
                    "placeholders": {
                        "host": "acme  or  https://acme.kapturecrm.com",
                        "login": "Kapture user name (leave empty if Password is a ready-made token)",
                        "password": "Kapture password, or the Basic token when User name is empty",
                    },
                },
                "conn-fields": {
                    "timeout": {
                        "label": "Read timeout (seconds)",
                        "description": "How long to wait for Kapture's answer to one request. Default 30.",
                        "schema": {"type": ["number", "null"], "minimum": 1},
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (seconds)",
                        "description": "How long to wait for a TCP/TLS connection. Default 10.",
                        "schema": {"type": ["number", "null"], "minimum": 1},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries of a transient failure (429, 5xx, timeouts, resets). Default 5.",
                        "schema": {"type": ["integer", "null"], "minimum": 0},
                    },
                    "backoff_base": {
                        "label": "Backoff base (seconds)",
                        "description": "First retry waits up to this long, doubling each time (full jitter). "
                        "Default 0.5.",
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                    "backoff_max": {
                        "label": "Backoff cap (seconds)",
                        "description": "Longest wait between two retries. Default 30.",
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                    "pool_size": {
                        "label": "Connection pool size",
                        "description": "Keep-alive connections kept open to Kapture. Default 32.",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                    },
                    "allow_insecure_http": {
                        "label": "Allow plain http:// to non-loopback hosts",
                        "description": "Off by default: credentials would travel unencrypted.",
                        "schema": {"type": ["boolean", "null"]},
                    },
                },
            }
        ],
    }
