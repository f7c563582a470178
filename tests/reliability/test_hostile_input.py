"""Hostile input: mapping, validation and encoding survive anything a warehouse or a row mapper can yield.

Values: arbitrary Unicode, control characters, lone surrogates, 1 MB strings, NaN and ±Infinity (floats
and Decimals, quiet and signalling), Decimals with huge exponents, huge integers, bytes, None, tz-aware
and naive datetimes, dates, times, UUIDs, nested dicts (any keys) in ``associate_fields``, lists, sets and
other objects — in every column, the order id included. Every row must end either encoded (JSON that
``json.loads`` reads back, Decimal digits exact, every value where its column says) or refused with an
``InvalidOrder`` whose field names the column (or a key inside it); nothing else may escape. Through the
sync engine the same rows, with duplicate order ids, are each accounted for exactly once, and Kapture
holds the newest valid row of each order.

Also: colliding column names are refused before anything is sent, and a templated ``parameters`` value
such as ``'; DROP TABLE erp_orders; --`` stays a bound value through a real DAG run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
import zoneinfo
from collections import Counter
from decimal import Decimal
from typing import Any

import pendulum
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.payload import (
    CUSTOMER_NAME_PATH,
    ORDER_ID_PATH,
    InvalidOrder,
    MappingError,
    OrderMapper,
    encode_json,
    render_value,
    resolve_column,
)
from kapture_provider.sync.engine import OrderSync
from kapture_provider.sync.ledger import Ledger
from kapture_provider.testing.emulator import ADD_UPDATE_PATH, KaptureEmulator

pytestmark = pytest.mark.unit

COLUMNS = (
    "order_id",
    "customer_name",
    "phone",
    "email_id",
    "order_info.remarks",
    "invoice_date",
    "contact_info.0.contact_person_email",
    "order_info.associate_fields.amount",
    "order_info.associate_fields.meta",
    "enquiry_info.associate_fields.note",
    "_version",
)
PATHS = {
    c: ".".join([s, *([str(i)] if i is not None else []), *keys])
    for c in COLUMNS
    if (where := resolve_column(c)) is not None
    for s, i, keys in [where]
}
MEGABYTE = 1_000_000
ZONES = [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(-dt.timedelta(hours=14))]
ZONES.append(zoneinfo.ZoneInfo("America/New_York"))

# --------------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------------

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
any_text = st.text(st.one_of(st.characters(), st.characters(max_codepoint=0x1F), surrogates), max_size=40)
big_text = st.sampled_from(
    [
        "x" * MEGABYTE,
        '\u0000\u001f\u007f"\\\n' * (MEGABYTE // 6),
        "\U0001f600é漢" * (MEGABYTE // 4),
    ]
)
special_numbers = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal("1E+999999"),
        Decimal("-1.50E-999999"),
        Decimal("0E-7"),
        Decimal("-0"),
        2**63,
        -(2**63) - 1,
    ]
)
# more than the 4,300 digits Python turns into text (ints of 3,900 to 4,300 digits may go either way)
huge_integers = st.integers(4301, 5000).map(lambda digits: 10**digits) | st.integers(4301, 5000).map(
    lambda digits: -(10**digits) + 1
)
scalars = st.one_of(
    any_text,
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    special_numbers,
    huge_integers,
    st.binary(max_size=8),
    st.binary(max_size=8).map(bytearray),
    st.datetimes(timezones=st.sampled_from([None, *ZONES])),
    st.dates(),
    st.times(),
    st.uuids(),
    st.builds(object),
    st.frozensets(st.integers(), max_size=2),
)
keys = st.one_of(any_text, st.integers(), st.booleans(), st.none())
nested = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(keys, inner, max_size=3),
    ),
    max_leaves=8,
)
values = st.one_of(scalars, nested, big_text)
order_ids = st.one_of(
    st.sampled_from(["A-1", "A-2", " 000123 ", "", "   "]),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    special_numbers,
    huge_integers,
    any_text,
    st.none(),
    st.binary(max_size=4),
)
versions = st.one_of(
    st.integers(0, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal("NaN"), Decimal("sNaN"), float("nan")]),
    st.datetimes(timezones=st.sampled_from([None, *ZONES])),
    st.dates(),
    any_text,
    st.none(),
)
names = st.one_of(st.sampled_from(["Meera Iyer", "  ", ""]), any_text, values)


@st.composite
def rows(draw: Any, order_id: Any = order_ids) -> list[Any]:
    row = [draw(order_id), draw(names)]
    row += [draw(values) for _ in COLUMNS[2:-1]]
    row.append(draw(versions))
    return row


# --------------------------------------------------------------------------------------------------
# what a value must become, written independently of the provider's code
# --------------------------------------------------------------------------------------------------


class Refused(Exception):
    """The value has no JSON form (at ``path``)."""

    def __init__(self, path: str):
        self.path = path


def expected_json(value: Any, path: str) -> Any:
    """The JSON value a warehouse value must be sent as (Decimals kept as Decimals), or :class:`Refused`."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(path) from None
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= 10**3900:  # Python turns at most 4,300 digits into text
            raise Refused(path)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Refused(path)
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Refused(path)
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            try:
                value = value.astimezone(dt.UTC)
            except OverflowError:
                raise Refused(path) from None
        return f"{value.year:04d}-{value:%m-%d %H:%M:%S}"
    if isinstance(value, dt.date):
        return f"{value.year:04d}-{value:%m-%d}"
    if isinstance(value, dt.time):
        return value.strftime("%H:%M:%S")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            text = str(key)
            out[text] = expected_json(item, f"{path}.{text}")
            expected_json(text, f"{path}.{text}")  # a key must be valid Unicode too
        return out
    if isinstance(value, list | tuple):
        return [expected_json(item, f"{path}.{i}") for i, item in enumerate(value)]
    raise Refused(path)


def expected_order_id(value: Any) -> str:
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool) or value is None:
        text = ""
    elif isinstance(value, int) and abs(value) < 10**3900:
        text = str(value)
    elif isinstance(value, float | Decimal) and Decimal(value).is_finite() and math.isfinite(float(value)):
        number = Decimal(value)  # a whole number within the range of a float
        if number != number.to_integral_value():
            raise Refused(ORDER_ID_PATH)
        text = str(int(number))
    else:
        raise Refused(ORDER_ID_PATH)
    if not text or len(text) > 255:  # the ledger keys orders by a VARCHAR(255)
        raise Refused(ORDER_ID_PATH)
    return text


def expected_body(row: list[Any]) -> tuple[str, dict[str, Any]] | Refused:
    """``(order id, {path: expected JSON value})`` for a row, or the first reason to refuse it."""
    try:
        fields = {PATHS[c]: expected_json(v, PATHS[c]) for c, v in zip(COLUMNS, row, strict=True) if c in PATHS}
        order_id = expected_order_id(row[0])
        name = fields[CUSTOMER_NAME_PATH]
        if not isinstance(name, str) or not name.strip():
            raise Refused(CUSTOMER_NAME_PATH)
    except Refused as refused:
        return refused
    return order_id, fields


def lookup(body: Any, path: str) -> Any:
    for part in path.split("."):
        body = body[int(part)] if isinstance(body, list) else body[part]
    return body


def same_json(actual: Any, expected: Any) -> bool:
    """Equal, with Decimals compared digit for digit (as parsed with ``parse_float=Decimal``)."""
    if isinstance(expected, Decimal):
        if isinstance(actual, int) and not isinstance(actual, bool):
            return Decimal(actual) == expected and "E" not in str(expected) and "." not in str(expected)
        return isinstance(actual, Decimal) and str(actual) == str(expected)
    if isinstance(expected, float):
        return (isinstance(actual, Decimal) and float(actual) == expected) or actual == expected
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(same_json(actual[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(same_json(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return type(actual) is type(expected) and actual == expected


def has_numbers(value: Any) -> bool:
    if isinstance(value, dict):
        return any(has_numbers(v) for v in value.values())
    if isinstance(value, list):
        return any(has_numbers(v) for v in value)
    return isinstance(value, float | Decimal)


def names_the_field(error: InvalidOrder, expected_path: str) -> bool:
    """The error names the column's field (or a key inside it), in its field and in its text."""
    field = error.field
    return (field == expected_path or field.startswith(expected_path + ".")) and str(error).startswith(field)


# --------------------------------------------------------------------------------------------------
# mapping, validation and encoding (no I/O: many examples)
# --------------------------------------------------------------------------------------------------

MAPPER = OrderMapper(COLUMNS, null_values="empty")  # every value rendered, NULLs as ""


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rows())
@example(["A-1", "Meera", *([None] * (len(COLUMNS) - 3)), 1])
@example([Decimal("sNaN"), "Meera", *([None] * (len(COLUMNS) - 3)), 1])
@example([10**5000, "Meera", *([None] * (len(COLUMNS) - 3)), 1])
@example([Decimal("1E+999999"), "Meera", *([None] * (len(COLUMNS) - 3)), 1])
@example(["A-1", "Meera", None, None, None, None, None, None, {"\ud800": 1}, None, 1])
@example(["A-1", "Meera", None, None, None, None, None, None, {"k\ud800": float("nan")}, None, 1])
@example(["A-1", "Meera", None, None, None, None, None, 10**5000, None, None, 1])
@example(["A-1", "Meera", *([None] * (len(COLUMNS) - 4)), dt.datetime(1, 1, 1, tzinfo=ZONES[1]), 1])
def test_every_row_is_encoded_exactly_or_refused_naming_the_field(row: list[Any]) -> None:
    expected = expected_body(row)
    try:
        order = MAPPER.prepare(row)
    except InvalidOrder as err:
        assert isinstance(expected, Refused), f"refused a sendable row: {err}"
        assert err.reason and "\n" not in str(err)
        assert any(names_the_field(err, path) for path in PATHS.values()), str(err)
        str(err).encode("utf-8")  # the reason can be logged and stored in the ledger as it is
        return
    assert not isinstance(expected, Refused), f"sent a row that has no JSON form at {expected.path}"
    order_id, fields = expected
    assert order.order_id == order_id
    assert hashlib.sha256(order.data).hexdigest() == order.body_hash
    text = order.data.decode("utf-8")  # valid UTF-8
    plain = json.loads(text)  # every JSON reader can take it: no NaN, no Infinity, no lone surrogate
    exact = json.loads(text, parse_float=Decimal)
    assert plain["order_info"]["order_id"] == order_id
    for path, value in fields.items():
        if path == ORDER_ID_PATH:
            continue
        assert same_json(lookup(exact, path), value), (path, lookup(exact, path), value)
    assert "_version" not in text
    assert plain["order_info"]["update"] is True


@settings(max_examples=300, deadline=None, database=None)
@given(nested)
def test_rendered_values_round_trip_through_json(value: Any) -> None:
    """encode_json(render_value(x)) is JSON that json.loads reads back to x's rendering, Decimals exact."""
    try:
        rendered = render_value(value, "order_info.associate_fields.x")
    except InvalidOrder as err:
        assert names_the_field(err, "order_info.associate_fields.x"), str(err)
        try:
            expected_json(value, "order_info.associate_fields.x")
        except Refused:
            return
        raise AssertionError(f"refused a value that has a JSON form: {err}") from None
    expected = expected_json(value, "order_info.associate_fields.x")
    data = encode_json(rendered)
    assert same_json(json.loads(data, parse_float=Decimal), expected)
    json.loads(data)


@settings(max_examples=300, deadline=None, database=None)
@given(nested)
def test_fast_and_exact_encodings_write_the_same_bytes(value: Any) -> None:
    """A body without a Decimal (C encoder) is written byte for byte as the exact encoder writes it (a body
    with one): body hashes, and so the ledger's change detection, do not depend on which one ran."""
    try:
        rendered = render_value(value, "order_info.associate_fields.x")
    except InvalidOrder:
        return
    with_decimal = encode_json({"d": Decimal("1.0"), "v": rendered})

    assert with_decimal == b'{"d":1.0,"v":' + encode_json(rendered) + b"}"


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(
        st.sampled_from(
            [
                *COLUMNS,
                "phone",
                "customer_info.phone",
                "remarks",
                "order_info.associate_fields",
                "contact_info.phone",
                "bogus",
                "order_info.",
                "contact_info.1.first_name",
                "order_info.order_id",
            ]
        ),
        min_size=1,
        max_size=8,
    )
)
def test_column_names_map_or_are_refused_before_sending(columns: list[str]) -> None:
    """Duplicate, colliding, nested, ambiguous or unknown column names: a MappingError naming them, never a crash."""
    try:
        OrderMapper(columns)
    except MappingError as err:
        assert any(c in str(err) for c in columns) or "order_info.order_id" in str(err)
        return
    paths = [where for c in columns if (where := resolve_column(c)) is not None]
    assert len(columns) == len(set(columns)) and len(paths) == len(set(paths))


# --------------------------------------------------------------------------------------------------
# through the sync engine and Kapture: each row delivered or rejected, counted once
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def engine_env(kapture_emulator: KaptureEmulator, sqlite_warehouse: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AIRFLOW_CONN_KAPTURE_DEFAULT", kapture_emulator.connection_json(max_retries=0))
    return kapture_emulator, sqlite_warehouse


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(rows(order_id=st.one_of(st.sampled_from(["A-1", "A-2", "A-3"]), order_ids)), min_size=1, max_size=12))
@example(batch=[["A-1", "Meera", *([None] * (len(COLUMNS) - 3)), float("nan")]])
@example(batch=[["A-1", "Meera", *([None] * (len(COLUMNS) - 3)), Decimal("sNaN")], ["A-1", None, *([None] * 9)]])
@example(batch=[["A-1", "Meera", *([None] * (len(COLUMNS) - 3)), "v\ud800"]])
@example(batch=[[Decimal("sNaN"), "Meera", *([None] * (len(COLUMNS) - 2))], ["\ud800", "M", *([None] * 9)]])
@example(batch=[["A-1", "Meera", *([None] * (len(COLUMNS) - 3)), 1], ["A-1", "Meera", None, "a@b.c", *([None] * 7)]])
@example(batch=[["A" * 256, "Meera", *([None] * (len(COLUMNS) - 3)), "v" * 300]])
def test_sync_engine_accounts_for_every_hostile_row_once(engine_env: Any, batch: list[list[Any]]) -> None:
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    emulator, _warehouse = engine_env
    emulator.reset()
    table = f"ledger_{uuid.uuid4().hex[:12]}"
    ledger = Ledger(SqliteHook(sqlite_conn_id="erp_warehouse"), table)
    hook = KaptureHook(max_requests_per_second=2000)
    try:
        summary = OrderSync(hook, ledger, max_concurrency=4).run(
            list(COLUMNS), [batch], version_column="_version", null_values="empty"
        )
        again = OrderSync(hook, ledger, max_concurrency=4).run(
            list(COLUMNS), [batch], version_column="_version", null_values="empty"
        )
    finally:
        hook.close()
        ledger.close()

    outcomes = [expected_body(row) for row in batch]
    valid = [o for o in outcomes if not isinstance(o, Refused)]
    newest = {order_id: fields for order_id, fields in valid}  # the last valid row of each order wins
    refused = [o for o in outcomes if isinstance(o, Refused)]
    result = summary.as_dict()
    assert result["rows_read"] == len(batch)
    assert (result["invalid"], result["stale"]) == (len(refused), 0)
    assert result["duplicates"] == len(valid) - len(newest)
    assert (result["succeeded"], result["failed"]) == (len(newest), 0)
    assert result["rows_read"] == sum(
        result[k] for k in ("succeeded", "failed", "unchanged", "stale", "invalid", "duplicates")
    )
    for problem in result["invalid_rows"]:
        refusal = outcomes[problem["row"] - 1]
        assert isinstance(refusal, Refused)
        assert any(problem["error"].startswith(p) for p in PATHS.values()), problem
    stored = emulator.orders
    assert set(stored) == set(newest)
    for order_id, fields in newest.items():
        for path, value in fields.items():
            if path != ORDER_ID_PATH and not has_numbers(value):  # Kapture's parser reads numbers as floats
                assert lookup(stored[order_id], path) == value, (order_id, path)
    # the second run sends nothing; a refused row older than what was delivered counts as stale instead
    assert (again.succeeded, again.failed, again.unchanged) == (0, 0, len(newest))
    assert again.invalid + again.stale == len(refused)
    assert Counter(r.order_id for r in emulator.requests if r.path == ADD_UPDATE_PATH) == Counter(newest.keys())


# --------------------------------------------------------------------------------------------------
# templated parameters stay bound through a real DAG run
# --------------------------------------------------------------------------------------------------

HOSTILE_PARAMETERS = ("'; DROP TABLE erp_orders; --", "x' OR '1'='1'; DELETE FROM erp_orders; --")


def test_templated_parameters_stay_bound_through_a_dag_run(
    sqlite_warehouse: Any, kapture_conn: KaptureEmulator, run_dag_at: Any
) -> None:
    from reliability_kit import EXAMPLE_TASK_ID, load_example_dag

    from kapture_provider.compat import DAG, CronDataIntervalTimetable, Param
    from kapture_provider.testing.warehouse import generate_orders
    from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

    day = dt.datetime(2026, 11, 26)
    sqlite_warehouse.insert_orders(list(generate_orders(50, day, day + dt.timedelta(hours=3))))
    example = load_example_dag().get_task(EXAMPLE_TASK_ID)
    with DAG(
        dag_id=f"kapture_hostile_params_{uuid.uuid4().hex[:8]}",
        schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
        start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
        catchup=False,
        params={"evil": Param(HOSTILE_PARAMETERS[0], type="string"), "name": Param(HOSTILE_PARAMETERS[1])},
        default_args={"retries": 0},
    ) as dag:
        SqlToKaptureOrdersOperator(  # the example's query, its interval bounds both set to the hostile text
            task_id="sync",
            sql_conn_id="erp_warehouse",
            sql=example.sql + " AND customer_name <> %(name)s",
            parameters={"start": "{{ params.evil }}", "end": "{{ params.evil }}", "name": "{{ params.name }}"},
            version_column="_version",
        )
    outcome = run_dag_at(dag, dt.datetime(2026, 11, 26, 2, tzinfo=dt.UTC))

    assert outcome.state == "success", outcome.task_states
    summary = outcome.xcom("sync")
    assert summary["rows_read"] == 0 and summary["requests"] == 0
    assert sqlite_warehouse.table_exists("erp_orders")
    assert sqlite_warehouse.query("SELECT COUNT(*) FROM erp_orders") == [(50,)]
    assert not kapture_conn.requests
    rendered = rendered_fields(dag.dag_id)
    assert all(json.dumps(p)[1:-1] in rendered for p in HOSTILE_PARAMETERS)  # rendered, then bound as values


def rendered_fields(dag_id: str) -> str:
    """Everything stored in rendered_task_instance_fields for a DAG, as text."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        fields = session.scalars(select(RTIF.rendered_fields).where(RTIF.dag_id == dag_id)).all()
    return json.dumps(fields)
