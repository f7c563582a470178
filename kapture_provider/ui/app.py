"""The Kapture page's FastAPI app, mounted by the API server under ``/kapture`` (Airflow 3.1+).

``GET /kapture/`` renders the page (plain HTML, no script); ``GET /kapture/api/syncs`` returns the same
data as JSON. Both use Airflow's own security: the caller must be logged in (the UI's session cookie or
an ``Authorization: Bearer`` token, else 401/403), and sees only the DAGs the auth manager lets them read.
Personal data never appears: order ids, counts, times and Kapture's errors only.

This module is imported on the API server only, so it uses the API server's own (non-SDK) Airflow names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.models.connection import Connection
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.orm import Session

from kapture_provider.sync.ledger import Ledger, OwedOrder, OwedSummary
from kapture_provider.ui.runs import SyncTask, sync_tasks

#: Owed orders listed per ledger (the total is always counted in full).
OWED_ORDERS_SHOWN = 100
RUNS_SHOWN = 10

_templates = Environment(loader=PackageLoader("kapture_provider.ui"), autoescape=select_autoescape())


@dataclass(frozen=True)
class SyncView:
    """One sync task as the page shows it: its last runs and what its ledger still owes Kapture."""

    task: SyncTask
    owed: OwedSummary | None  # how many orders are owed and parked
    owed_orders: list[OwedOrder]  # the ones failing longest (never their pending body)
    owed_error: str | None  # why the ledger could not be read


def create_app() -> FastAPI:
    """The page's app: ``/`` (HTML) and ``/api/syncs`` (JSON)."""
    app = FastAPI(title="Kapture", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page(user: GetUserDep, session: SessionDep) -> HTMLResponse:
        html = _templates.get_template("syncs.html").render(syncs=readable_syncs(user, session))
        return HTMLResponse(html)

    @app.get("/api/syncs")
    def syncs(user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        return {"syncs": [dataclasses.asdict(view) for view in readable_syncs(user, session)]}

    return app


def readable_syncs(user: Any, session: Session) -> list[SyncView]:
    """The sync tasks of the DAGs ``user`` may read, each with its ledger's owed orders."""
    dag_ids = get_auth_manager().get_authorized_dag_ids(user=user, method="GET", session=session)
    return [_with_owed(task) for task in sync_tasks(session, dag_ids, RUNS_SHOWN)]


def _with_owed(task: SyncTask) -> SyncView:
    if task.ledger_conn_id is None or task.ledger_table is None:
        return SyncView(task, None, [], "no run has recorded where its ledger is yet")
    try:
        ledger = Ledger(Connection.get_connection_from_secrets(task.ledger_conn_id).get_hook(), task.ledger_table)
        try:
            return SyncView(task, ledger.owed_summary(), ledger.owed_orders(OWED_ORDERS_SHOWN), None)
        finally:
            ledger.close()
    except Exception as err:  # shown on the page; the other syncs still render
        return SyncView(task, None, [], f"cannot read {task.ledger_table} through {task.ledger_conn_id!r}: {err}")
