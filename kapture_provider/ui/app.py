"""The Kapture page's FastAPI app, mounted by the API server under ``/kapture`` (Airflow 3.1+).

``GET /kapture/`` renders the page (plain HTML and SVG, no script; ``?order_id=`` looks one order up),
``GET /kapture/api/syncs`` returns its data as JSON, ``POST /kapture/retry`` retries parked orders.
Airflow's own security decides: the caller must be logged in (the UI's session cookie or an
``Authorization: Bearer`` token; a browser without one is sent to Airflow's login page, an API client gets
401/403), sees the DAGs the auth manager lets them read, and sees a ledger only when they may read every
DAG that uses it. Retrying needs the right to edit every one of those DAGs and the form's CSRF token.
Personal data never appears: order ids, counts, times and Kapture's errors only.

This module is imported on the API server only, so it uses the API server's own (non-SDK) Airflow names.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.configuration import conf
from airflow.models.connection import Connection
from cachetools import TTLCache
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadData, URLSafeTimedSerializer
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from kapture_provider.sync.ledger import Ledger, OwedOrder, OwedSummary
from kapture_provider.sync.operations import OrderRecord, dags_using, find_order, retry_parked
from kapture_provider.ui.chart import run_chart
from kapture_provider.ui.runs import RestApi, SyncTask, sync_tasks

log = logging.getLogger(__name__)

#: Owed orders listed per ledger (the total is always counted in full).
OWED_ORDERS_SHOWN = 100
RUNS_SHOWN = 10
#: Seconds a ledger's counts are reused before the page reads its database again.
LEDGER_CACHE_SECONDS = 30
#: Seconds a retry form stays valid.
CSRF_MAX_AGE = 3600
#: What a viewer is told when a ledger cannot be read; the error itself goes to the API server's log.
LEDGER_ERROR = "The ledger could not be read; the API server's log has the error."
RUNS_ERROR = "The runs could not be read from Airflow's REST API; the API server's log has the error."
HIDDEN = "This ledger is shared with DAGs you may not read, so its orders are not shown."

_templates = Environment(loader=PackageLoader("kapture_provider.ui"), autoescape=select_autoescape())
LedgerKey = tuple[str, str]  # (connection id, table)


@dataclass(frozen=True)
class LedgerState:
    """What the page read from one ledger: its owed orders and the DAGs its run log names."""

    owed: OwedSummary
    owed_orders: list[OwedOrder]
    dags: set[str]


@dataclass(frozen=True)
class SyncView:
    """One sync task as the page shows it: its last runs and what its ledger still owes Kapture."""

    task: SyncTask
    owed: OwedSummary | None  # how many orders are owed and parked
    owed_orders: list[OwedOrder]  # the ones failing longest (never their pending body)
    owed_error: str | None  # why the ledger is not shown
    may_retry: bool  # the user may edit every DAG that uses the ledger


class LedgerReads:
    """Each ledger's state, read at most once per :data:`LEDGER_CACHE_SECONDS` (a retry forgets it at once)."""

    def __init__(self) -> None:
        self._cache: TTLCache[LedgerKey, LedgerState] = TTLCache(maxsize=256, ttl=LEDGER_CACHE_SECONDS)
        self._lock = threading.Lock()

    def state(self, key: LedgerKey) -> LedgerState:
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        with open_ledger(key) as ledger:
            state = LedgerState(ledger.owed_summary(), ledger.owed_orders(OWED_ORDERS_SHOWN), dags_using(ledger))
        with self._lock:
            self._cache[key] = state
        return state

    def forget(self, key: LedgerKey) -> None:
        with self._lock:
            self._cache.pop(key, None)


@contextmanager
def open_ledger(key: LedgerKey) -> Iterator[Ledger]:
    """The ledger at ``(connection id, table)``, closed on exit."""
    ledger = Ledger(Connection.get_connection_from_secrets(key[0]).get_hook(), key[1])
    try:
        yield ledger
    finally:
        ledger.close()


def create_app() -> FastAPI:
    """The page's app: ``/`` (HTML), ``/api/syncs`` (JSON) and ``/retry`` (POST)."""
    app = FastAPI(title="Kapture", docs_url=None, redoc_url=None, openapi_url=None)
    reads = LedgerReads()

    @app.exception_handler(StarletteHTTPException)
    async def browsers_log_in(request: Request, exc: StarletteHTTPException) -> Response:
        """A browser that is not logged in goes to Airflow's login page, then back here."""
        if exc.status_code in (401, 403) and request.method == "GET" and _is_browser(request):
            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), 303)
        return await http_exception_handler(request, exc)

    @app.get("/", response_class=HTMLResponse)
    def page(
        request: Request, user: GetUserDep, session: SessionDep, order_id: str | None = None, retried: int | None = None
    ) -> HTMLResponse:
        views = _views(request, user, session, reads)
        lookup = (order_id or "").strip() or None
        found = _lookup(views, lookup) if lookup else []
        html = _templates.get_template("syncs.html").render(
            syncs=views,
            charts={(v.task.dag_id, v.task.task_id): run_chart(v.task.runs) for v in views},
            lookup=lookup,
            found=found,
            retried=retried,
            csrf_token=_csrf().dumps(user.get_id()),
        )
        return HTMLResponse(html)

    @app.get("/api/syncs")
    def syncs(request: Request, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        views = _views(request, user, session, reads)
        return {"syncs": [dataclasses.asdict(view) for view in views]}

    @app.post("/retry")
    def retry(
        request: Request,
        user: GetUserDep,
        session: SessionDep,
        dag_id: Annotated[str, Form()],
        task_id: Annotated[str, Form()],
        csrf_token: Annotated[str, Form()] = "",
        order_id: Annotated[str | None, Form()] = None,
    ) -> Response:
        _check_csrf(csrf_token, user.get_id())
        views = _views(request, user, session, reads)
        view = next((v for v in views if (v.task.dag_id, v.task.task_id) == (dag_id, task_id)), None)
        if view is None or view.task.ledger is None:
            raise HTTPException(404, "No sync task of that name that you may read.")
        if not view.may_retry:
            raise HTTPException(
                403, "You may not retry these orders: it needs the right to edit every DAG using the ledger."
            )
        try:
            with open_ledger(view.task.ledger) as ledger:
                retried = retry_parked(ledger, user.get_name(), order_id or None)
        except Exception:
            log.exception("Kapture page: retrying parked orders in %s through %r failed", *view.task.ledger[::-1])
            raise HTTPException(500, LEDGER_ERROR) from None
        reads.forget(view.task.ledger)
        log.info("Kapture page: %s retried %d parked orders of %s.%s", user.get_name(), len(retried), dag_id, task_id)
        return RedirectResponse(f"./?retried={len(retried)}", 303)

    return app


def _views(request: Request, user: Any, session: Session, reads: LedgerReads) -> list[SyncView]:
    """The sync tasks the user may read, each with its ledger (when the user may read all its DAGs)."""
    auth = get_auth_manager()
    readable = auth.get_authorized_dag_ids(user=user, method="GET", session=session)
    editable = auth.get_authorized_dag_ids(user=user, method="PUT", session=session)
    api = RestApi(_base_url(request), _token(request))
    try:
        tasks = sync_tasks(api, RUNS_SHOWN)
    except httpx.HTTPError:
        log.exception("Kapture page: reading the sync tasks' runs from the REST API at %s failed", _base_url(request))
        raise HTTPException(502, RUNS_ERROR) from None
    finally:
        api.close()
    users: dict[LedgerKey, set[str]] = {}
    for task in tasks:
        if task.ledger is not None:
            users.setdefault(task.ledger, set()).add(task.dag_id)
    return [_view(task, users, readable, editable, reads) for task in tasks]


def _view(
    task: SyncTask, users: dict[LedgerKey, set[str]], readable: set[str], editable: set[str], reads: LedgerReads
) -> SyncView:
    if task.ledger is None:
        return SyncView(task, None, [], "No run has recorded where its ledger is yet.", False)
    try:
        state = reads.state(task.ledger)
    except Exception:
        log.exception("Kapture page: cannot read the ledger %s through connection %r", task.ledger[1], task.ledger[0])
        return SyncView(task, None, [], LEDGER_ERROR, False)
    dags = users[task.ledger] | state.dags
    if not dags <= readable:
        return SyncView(task, None, [], HIDDEN, False)
    return SyncView(task, state.owed, state.owed_orders, None, dags <= editable)


def _lookup(views: list[SyncView], order_id: str) -> list[tuple[SyncTask, OrderRecord | None, str | None]]:
    """``order_id`` in each ledger shown (once per ledger): (the task, its record or None, an error)."""
    found: list[tuple[SyncTask, OrderRecord | None, str | None]] = []
    seen: set[LedgerKey] = set()
    for view in views:
        key = view.task.ledger
        if key is None or key in seen or view.owed_error is not None:
            continue
        seen.add(key)
        try:
            with open_ledger(key) as ledger:
                found.append((view.task, find_order(ledger, order_id), None))
        except Exception:
            log.exception("Kapture page: looking up an order in %s through %r failed", key[1], key[0])
            found.append((view.task, None, LEDGER_ERROR))
    return found


def _is_browser(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _token(request: Request) -> str:
    """The caller's own token (header or the UI's cookie), so that the REST API applies their permissions."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")


def _base_url(request: Request) -> str:
    """Where this API server answers: ``[api] base_url``, else the address the request came to."""
    return conf.get("api", "base_url", fallback=None) or f"{request.url.scheme}://{request.url.netloc}"


def _csrf() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(conf.get("api", "secret_key"), salt="kapture-page-retry")


def _check_csrf(token: str, user_id: str) -> None:
    """Refuse a form that this page did not give this user (a cross-site POST carries no valid token)."""
    try:
        valid = _csrf().loads(token, max_age=CSRF_MAX_AGE) == user_id
    except BadData:
        valid = False
    if not valid:
        raise HTTPException(403, "The form is missing its CSRF token or it has expired: reload the page.")
