"""The Airflow plugin that adds the Kapture page (registered through the ``airflow.plugins`` entry point).

On Airflow 3.1+ it mounts the page's app under ``/kapture`` in the API server and adds a "Kapture" entry
to the UI's Browse menu, showing the page inside the UI. On older Airflow it adds nothing.

Every Airflow process loads plugins (schedulers, workers, triggerers); only the API server serves the
page, so the app — and the API server's modules it needs — is built on its first request, not on import.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from kapture_provider.compat import AIRFLOW_V_3_1_PLUS, AirflowPlugin

URL_PREFIX = "/kapture"

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _PageApp:
    """An ASGI app that builds the page's FastAPI app when the API server first routes a request to it."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if self._app is None:
            from kapture_provider.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class KapturePlugin(AirflowPlugin):
    """The Kapture page: sync runs with their counts and the orders still owed to Kapture."""

    name = "kapture"
    fastapi_apps = [{"name": "Kapture", "app": _PageApp(), "url_prefix": URL_PREFIX}] if AIRFLOW_V_3_1_PLUS else []
    external_views = (
        # href is relative to the UI's base URL (no leading slash), so deployments under a path work too.
        [{"name": "Kapture", "href": URL_PREFIX.lstrip("/") + "/", "destination": "nav", "url_route": "kapture",
          "category": "browse"}]
        if AIRFLOW_V_3_1_PLUS
        else []
    )  # fmt: skip
