"""A ledger the run cannot read fails the run: it is never taken for a ledger that does not exist yet."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kapture_provider.compat import BaseHook
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.sync.engine import OrderSync
from kapture_provider.sync.ledger import DELIVERED, Ledger, Outcome

pytestmark = pytest.mark.integration

TABLE = "kapture_order_sync_ledger"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}


@pytest.fixture
def reader_without_rights(postgres_warehouse: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A ledger with one delivered order, and connection ``erp_reader``: a role that may not read it."""
    writer = Ledger(BaseHook.get_connection("erp_warehouse").get_hook(), TABLE)
    writer.create()
    writer.record([Outcome("A-1", DELIVERED, "h", None)], "2026-11-27T10:00:00.000000Z")
    writer.close()
    role = f"kapture_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**PG, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {postgres_warehouse.schema} TO {role}")
    extra = {"options": f"-c search_path={postgres_warehouse.schema}"}
    value = {"conn_type": "postgres", "host": PG["host"], "port": PG["port"], "login": role, "schema": PG["dbname"]}
    monkeypatch.setenv("AIRFLOW_CONN_ERP_READER", json.dumps({**value, "extra": extra}))
    yield "erp_reader"
    with psycopg.connect(**PG, autocommit=True) as conn:
        conn.execute(f"REVOKE ALL ON SCHEMA {postgres_warehouse.schema} FROM {role}")
        conn.execute(f"DROP ROLE {role}")


def test_a_dry_run_against_an_unreadable_ledger_fails(reader_without_rights: str, kapture_conn: Any) -> None:
    ledger = Ledger(BaseHook.get_connection(reader_without_rights).get_hook(), TABLE)
    hook = KaptureHook(max_requests_per_second=None)
    try:
        with pytest.raises(Exception, match="permission denied") as refused:  # psycopg 3, or psycopg2 before
            OrderSync(hook, ledger, dry_run=True).run(["order_id", "customer_name"], [[("A-1", "Customer 1")]])
        assert type(refused.value).__name__ == "InsufficientPrivilege"
    finally:
        ledger.close()
        hook.close()
    assert not kapture_conn.requests
