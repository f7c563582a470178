"""Every supported warehouse and driver, read correctly — and whatever cannot be read correctly refused loudly.

Drivers: sqlite3, psycopg 3 and psycopg2 (the postgres provider's two modes), mysqlclient and
mysql-connector-python on MariaDB (the mysql provider's two clients), DuckDB (the duckdb provider).
The operator's ``execute()`` runs in this process against the real database and the emulator.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from kapture_provider.compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_1_PLUS, AirflowFailException, BaseHook
from kapture_provider.sync.engine import shard_of
from kapture_provider.sync.newest import KEY_COLUMN, ROWS_COLUMN, NewestRowCheck, SourceInconsistency
from kapture_provider.sync.source import count_rows, stream_rows, streaming_cursor
from kapture_provider.testing import warehouse as example_warehouse
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

DAY = dt.datetime(2026, 11, 26)
SUPPORTED = "SQLite, PostgreSQL, MySQL/MariaDB or DuckDB"
CHANGES_DDL = """CREATE TABLE order_changes (
    change_id INTEGER PRIMARY KEY,
    order_id VARCHAR(32) NOT NULL,
    customer_name VARCHAR(200),
    invoice_no VARCHAR(32),
    total_amount NUMERIC(12, 2),
    updated_at TIMESTAMP NOT NULL,
    _version INTEGER
)"""
DRIVERS = ["sqlite", "postgres-psycopg", "postgres-psycopg2", "mariadb-mysqlclient", "mariadb-connector", "duckdb"]
#: An Oracle connection: a DbApiHook whose database cannot hold the ledger (nothing listens on port 9).
ORACLE = json.dumps({"conn_type": "oracle", "host": "127.0.0.1", "port": 9, "login": "erp", "password": "x"})


@pytest.fixture(params=DRIVERS)
def driver_warehouse(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A warehouse read through one driver: ``erp_warehouse`` points at it."""
    kind, _, client = request.param.partition("-")
    warehouse = request.getfixturevalue(f"{kind}_connector_warehouse" if client == "connector" else f"{kind}_warehouse")
    if client == "psycopg2":  # the postgres provider's mode where psycopg 3 is not installed
        import airflow.providers.postgres.hooks.postgres as postgres_hooks

        monkeypatch.setattr(postgres_hooks, "USE_PSYCOPG3", False)
    return warehouse


def create_changes(warehouse: Any, changes: list[tuple[Any, ...]]) -> None:
    """``order_changes``: (order_id, name, invoice, amount, updated_at, version), several rows per order."""
    warehouse.execute("DROP TABLE IF EXISTS order_changes")
    warehouse.execute(warehouse.ddl(CHANGES_DDL))
    p = warehouse.placeholder
    warehouse.executemany(
        "INSERT INTO order_changes (change_id, order_id, customer_name, invoice_no, total_amount, updated_at, "
        f"_version) VALUES ({', '.join([p] * 7)})",
        [(i, *change) for i, change in enumerate(changes, start=1)],
    )


def at(minutes: int) -> str:
    return (DAY + dt.timedelta(minutes=minutes)).strftime(example_warehouse.TIMESTAMP_FORMAT)


def sync(sql: str, **kwargs: Any) -> dict[str, Any]:
    operator = SqlToKaptureOrdersOperator(
        task_id=f"sync_{uuid.uuid4().hex[:6]}", sql_conn_id="erp_warehouse", sql=sql, **kwargs
    )
    return operator.execute({})  # type: ignore[arg-type]


def sent(emulator: KaptureEmulator) -> list[str]:
    return [r.order_id for r in emulator.requests if r.path == ADD_UPDATE_PATH]


CHANGES_SQL = """
SELECT order_id, customer_name, invoice_no, total_amount AS "order_info.associate_fields.total_amount", _version
FROM order_changes
WHERE updated_at >= {start} AND updated_at < {end} AND invoice_no LIKE 'INV-{percent}'  -- a trailing comment
"""


def test_each_driver_binds_streams_and_sends_each_orders_newest_row(
    driver_warehouse: Any, kapture_conn: KaptureEmulator
) -> None:
    changes = [
        ("A-1", "Kavya Nair", "INV-A1", Decimal("10.00"), at(5), 1),
        ("B-2", "Rohan Das", "INV-B1", Decimal("20.00"), at(10), 1),
        ("A-1", "Kavya Nair", "INV-A3", Decimal("30.75"), at(15), 3),
        ("C-3", "Diya Khan", "INV-C1", Decimal("5.00"), at(20), 1),
        ("A-1", "Kavya Nair", "INV-A2", Decimal("20.50"), at(25), 2),
        ("C-3", "Diya Khan", "INV-C2", Decimal("6.00"), at(30), 2),
        ("C-3", "Diya Khan", "X-C3", Decimal("7.00"), at(35), 3),  # filtered out by the LIKE
        ("D-4", "Arjun Menon", "INV-D1", Decimal("8.00"), at(30), None),  # no version: still sent
        ("E-5", "Meera Iyer", "INV-E1", Decimal("9.00"), at(70), 1),  # outside the interval
    ]
    create_changes(driver_warehouse, changes)
    interval = {"start": at(0), "end": at(60)}

    colon = sync(CHANGES_SQL.format(start=":start", end=":end", percent="%"), parameters=interval,
                 version_column="_version", chunk_size=2)  # fmt: skip

    assert (colon["rows_read"], colon["duplicates"], colon["succeeded"], colon["requests"]) == (7, 3, 4, 4)
    assert sorted(sent(kapture_conn)) == ["A-1", "B-2", "C-3", "D-4"]
    invoices = {k: v["order_info"]["invoice_no"] for k, v in kapture_conn.orders.items()}
    assert invoices == {"A-1": "INV-A3", "B-2": "INV-B1", "C-3": "INV-C2", "D-4": "INV-D1"}
    assert Decimal(str(kapture_conn.orders["A-1"]["order_info"]["associate_fields"]["total_amount"])) == Decimal(
        "30.75"
    )
    ledger = driver_warehouse.ledger()
    assert {k: v["version"] for k, v in ledger.items()} == {"A-1": "n:3", "B-2": "n:1", "C-3": "n:2", "D-4": None}

    # the same query written with %(name)s, where a literal % is written %%: the same rows, all unchanged
    pyformat = sync(CHANGES_SQL.format(start="%(start)s", end="%(end)s", percent="%%"), parameters=interval,
                    version_column="_version")  # fmt: skip
    assert (pyformat["rows_read"], pyformat["unchanged"], pyformat["requests"]) == (7, 4, 0)
    # what the progress lines count on: the query's rows, with the same bound parameters
    hook = BaseHook.get_connection("erp_warehouse").get_hook()
    assert count_rows(hook, CHANGES_SQL.format(start=":start", end=":end", percent="%"), interval) == 7
    # a SQLite warehouse's count comes with its snapshot: the query is not run a second time to count it
    _, stream = stream_rows(hook, CHANGES_SQL.format(start=":start", end=":end", percent="%"), interval, 2)
    stream.close()
    assert stream.row_count == (7 if driver_warehouse.kind == "sqlite" else None)


def test_order_ids_that_differ_in_case_are_different_orders(any_warehouse: Any, kapture_conn: KaptureEmulator) -> None:
    """MySQL's default collation would fold ``ab-1`` into ``AB-1`` and send one of the two."""
    create_changes(
        any_warehouse,
        [
            ("AB-1", "Kavya Nair", "INV-U1", Decimal("1.00"), at(5), 1),
            ("ab-1", "Rohan Das", "INV-L1", Decimal("2.00"), at(6), 1),
            ("AB-1", "Kavya Nair", "INV-U2", Decimal("3.00"), at(7), 2),
            ("ab-1", "Rohan Das", "INV-L2", Decimal("4.00"), at(8), 2),
        ],
    )

    summary = sync(CHANGES_SQL.format(start="'2026-11-26 00:00:00'", end="'2026-11-26 01:00:00'", percent="%"),
                   version_column="_version")  # fmt: skip

    assert (summary["rows_read"], summary["duplicates"], summary["succeeded"]) == (4, 2, 2)
    assert {k: v["order_info"]["invoice_no"] for k, v in kapture_conn.orders.items()} == {
        "AB-1": "INV-U2",
        "ab-1": "INV-L2",
    }
    assert {k: v["version"] for k, v in any_warehouse.ledger().items()} == {"AB-1": "n:2", "ab-1": "n:2"}


def test_ids_kapture_reads_as_one_order_fail_the_task_before_sending(
    any_warehouse: Any, kapture_conn: KaptureEmulator
) -> None:
    """``cd-2`` and ``cd-2 `` are two rows to the warehouse and one order to Kapture: which is newest is unknown."""
    create_changes(
        any_warehouse,
        [
            ("cd-2", "Kavya Nair", "INV-1", Decimal("1.00"), at(5), 1),
            ("cd-2 ", "Kavya Nair", "INV-2", Decimal("2.00"), at(6), 2),
        ],
    )

    with pytest.raises(AirflowFailException, match="order 'cd-2' came back twice") as caught:
        sync(CHANGES_SQL.format(start="'2026-11-26 00:00:00'", end="'2026-11-26 01:00:00'", percent="%"),
             version_column="_version")  # fmt: skip

    assert "TRIM" in str(caught.value)
    assert kapture_conn.requests == []
    assert any_warehouse.ledger() == {}


def test_newest_row_check_refuses_rows_grouped_by_anything_but_the_order_id() -> None:
    """What MySQL did with ``PARTITION BY "order_id"``: one group keyed by the literal, one row for all orders."""
    columns = ["order_id", "customer_name", ROWS_COLUMN, KEY_COLUMN]
    check = NewestRowCheck(columns, "order_id", '"order_id"')

    with pytest.raises(SourceInconsistency, match="grouped the rows by 'order_id' instead of the order id") as caught:
        check.check([("23500000", "Meera", 250, "order_id")])
    assert "escape_word_format" in str(caught.value)

    check = NewestRowCheck(columns, "order_id", "`order_id`")
    check.check([("A-1", "Meera", 3, b"A-1"), ("B-2", "Rohan", 1, b"B-2")])  # MySQL's key: the id's bytes
    with pytest.raises(SourceInconsistency, match="order 'B-2' came back twice"):
        check.check([("B-2", "Rohan", 1, b"B-2")])  # the next chunk repeats the last order
    assert check.folded == 2

    shard = (shard_of("A-1", 3), 3)  # a shard counts the rows folded into its own orders only
    in_shard = NewestRowCheck(columns, "order_id", "`order_id`", shard)
    in_shard.check([("A-1", "Meera", 3, b"A-1"), ("C-3", "Rohan", 5, b"C-3")])
    assert in_shard.folded == 2 + (4 if shard_of("C-3", 3) == shard[0] else 0)


def test_streaming_cursors(driver_warehouse: Any) -> None:
    """Each driver reads through a cursor that does not hold the whole result in memory."""
    from kapture_provider.compat import BaseHook

    conn = BaseHook.get_connection("erp_warehouse").get_hook().get_conn()
    try:
        cur = streaming_cursor(conn, 100)
        kind = type(cur).__name__
        expected = {
            "psycopg": "ServerCursor",
            "psycopg2": "cursor",
            "MySQLdb": "SSCursor",
            "mysql": "MySQLCursor",  # unbuffered (a buffered one is MySQLCursorBuffered)
            "sqlite3": "Cursor",
            "_duckdb": "DuckDBPyConnection",
            "duckdb": "DuckDBPyConnection",  # older duckdb releases (with Airflow 3.0)
        }[type(conn).__module__.split(".")[0]]
        assert kind.endswith(expected)
        if kind == "cursor":  # psycopg2: a named cursor is a server-side one
            assert cur.name == "kapture_sync_stream"
        cur.close()
    finally:
        conn.close()


def test_pymysql_streams_through_its_unbuffered_cursor(mariadb_warehouse: Any) -> None:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", user="root", database=mariadb_warehouse.schema)
    try:
        assert type(streaming_cursor(conn, 100)).__name__ == "SSCursor"
    finally:
        conn.close()


def test_warehouse_whose_engine_cannot_hold_the_ledger_fails_the_dag_and_sends_nothing(
    sqlite_warehouse: Any, kapture_conn: KaptureEmulator, airflow_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ERP_WAREHOUSE", ORACLE)

    run = airflow_cli("kapture_acceptance_orders", dt.datetime(2026, 11, 26, 2, tzinfo=dt.UTC))

    assert (run.state, run.task_states) == ("failed", {"sync_orders": "failed"})
    assert kapture_conn.requests == []
    if AIRFLOW_V_3_0_PLUS and not AIRFLOW_V_3_1_PLUS:
        return  # 3.0's `dags test` draws the failure for a terminal only; the message is checked on the others
    assert "cannot be kept in a 'oracle' database (connection 'erp_warehouse')" in run.output
    assert f"set ledger_conn_id to a {SUPPORTED} database" in run.output
    assert "nothing was read or sent" in run.output


def test_ledger_connection_that_cannot_hold_the_ledger_is_refused_before_reading(
    sqlite_warehouse: Any, kapture_conn: KaptureEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_warehouse.insert_orders(list(example_warehouse.generate_orders(5, DAY, DAY + dt.timedelta(hours=1))))
    monkeypatch.setenv("AIRFLOW_CONN_TEAM_LEDGER", ORACLE)

    with pytest.raises(AirflowFailException, match="Point ledger_conn_id at another connection") as caught:
        sync("SELECT order_id, customer_name FROM erp_orders", ledger_conn_id="team_ledger")

    assert "cannot be kept in a 'oracle' database (connection 'team_ledger')" in str(caught.value)
    assert kapture_conn.requests == []
    assert not sqlite_warehouse.table_exists("kapture_order_sync_ledger")


def test_example_warehouse_seeds_mariadb(mariadb_warehouse: Any) -> None:
    mariadb_warehouse.execute("DROP TABLE erp_orders")
    url = f"mysql://root@127.0.0.1:3306/{mariadb_warehouse.schema}"

    example_warehouse.main(["--url", url, "--orders", "40", "--invalid", "2", "--hours", "2"])

    rows = mariadb_warehouse.query("SELECT order_id, customer_name, updated_at FROM erp_orders ORDER BY order_id")
    assert len(rows) == 40
    assert [r[1] for r in rows[:2]] == ["", ""] and all(r[1] for r in rows[2:])
    assert isinstance(rows[0][2], dt.datetime)  # DATETIME: no time zone conversion, no update on change
