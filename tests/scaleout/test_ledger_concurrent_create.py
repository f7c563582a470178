"""Shards starting at once all create the ledger table: on PostgreSQL none of them may fail.

``CREATE TABLE IF NOT EXISTS`` is not atomic in PostgreSQL: sessions that race the one creating the table
wait for it to commit, then fail with ``type "…" already exists`` (the row type's catalog entry is unique).
Mapped shards of one sync on a fresh ledger do exactly this.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kapture_provider.sync.ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.scaleout]

PG: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
SHARDS = 8
ROUNDS = 5
TABLE = "kapture_order_sync_ledger"


@pytest.fixture
def ledger_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database of this pytest process, reachable as the ``scaleout_ledger`` connection."""
    name = f"kapture_scaleout_ledger_{os.getpid()}"
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    monkeypatch.setenv(
        "AIRFLOW_CONN_SCALEOUT_LEDGER",
        json.dumps(
            {"conn_type": "postgres", "host": PG["host"], "port": PG["port"], "login": PG["user"], "schema": name}
        ),
    )
    yield name
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_shards_creating_the_ledger_at_once_all_succeed(ledger_database: str) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    for _ in range(ROUNDS):
        with psycopg.connect(**PG, dbname=ledger_database, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        ledgers = [Ledger(PostgresHook(postgres_conn_id="scaleout_ledger"), TABLE) for _ in range(SHARDS)]
        for ledger in ledgers:
            ledger.conn  # noqa: B018 - connect before the race, as each shard does before creating the table
        errors = create_all_at_once(ledgers)
        for ledger in ledgers:
            ledger.close()
        assert not errors, f"{len(errors)} of {SHARDS} shards failed to create the ledger: {errors[:3]}"


def create_all_at_once(ledgers: list[Ledger]) -> list[BaseException]:
    """Call ``create()`` on every ledger at the same instant, one thread each; returns what they raised."""
    start = threading.Barrier(len(ledgers))
    errors: list[BaseException] = []

    def create(ledger: Ledger) -> None:
        start.wait()
        try:
            ledger.create()
            ledger.lookup(["00000001"])  # the table is usable afterwards
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=create, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors
