"""Pure payload functions: rendering, encoding, validation and column mapping (no network)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from kapture_provider.payload import (
    InvalidOrder,
    MappingError,
    OrderMapper,
    check_null_values,
    encode_json,
    prepare_order,
    render_order_id,
    render_value,
    resolve_column,
)

pytestmark = pytest.mark.unit

BIG = Decimal("12345678901234567890.123456789")


def minimal(order_id: Any = "1", name: Any = "Ann Example", **order_info: Any) -> dict[str, Any]:
    return {"customer_info": {"customer_name": name}, "order_info": {"order_id": order_id, **order_info}}


def decoded(data: bytes) -> Any:
    return json.loads(data, parse_float=Decimal)


# -- render_value --------------------------------------------------------------------------------------


def test_naive_datetime_is_taken_as_already_in_timezone() -> None:
    value = dt.datetime(2024, 3, 9, 7, 5, 1, 999999)

    assert render_value(value, "f") == "2024-03-09 07:05:01"
    assert render_value(value, "f", "Asia/Kolkata") == "2024-03-09 07:05:01"


@pytest.mark.parametrize(
    ("timezone", "expected"),
    [
        ("UTC", "2024-01-01 12:00:00"),
        ("Asia/Kolkata", "2024-01-01 17:30:00"),
        ("America/New_York", "2024-01-01 07:00:00"),
    ],
)
def test_aware_datetime_is_converted_to_timezone(timezone: str, expected: str) -> None:
    value = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)

    assert render_value(value, "f", timezone) == expected


def test_aware_datetime_in_other_zone_crossing_midnight() -> None:
    value = dt.datetime(2024, 6, 30, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))

    assert render_value(value, "f", "Asia/Kolkata") == "2024-07-01 10:00:00"


def test_date_and_time() -> None:
    assert render_value(dt.date(2024, 2, 29), "f") == "2024-02-29"
    assert render_value(dt.time(8, 9, 10), "f") == "08:09:10"


def test_none_becomes_empty_string_under_empty() -> None:
    assert render_value(None, "f") == ""
    body = decoded(prepare_order(minimal(invoice_no=None), null_values="empty").data)
    assert body["order_info"]["invoice_no"] == ""


def test_none_left_out_at_any_depth_under_omit_the_default() -> None:
    body = minimal(invoice_no=None, associate_fields={"a": None, "b": [1, None, {"c": None, "d": 2}]})

    sent = decoded(prepare_order(body).data)

    assert sent["order_info"] == {"order_id": "1", "associate_fields": {"b": [1, {"d": 2}]}}
    assert body["order_info"]["invoice_no"] is None  # the caller's body is left as it was


@pytest.mark.parametrize("null_values", ["omit", "empty"])
def test_null_mandatory_fields_make_the_order_invalid_under_both_policies(null_values: Any) -> None:
    mapper = OrderMapper(["order_id", "customer_name", "invoice_no"], null_values=null_values)

    with pytest.raises(InvalidOrder, match=r"^order_info\.order_id: is missing or empty"):
        mapper.prepare([None, "Ann Example", "INV-1"])
    with pytest.raises(InvalidOrder, match=r"^customer_info\.customer_name: is missing or empty"):
        mapper.prepare(["1", None, "INV-1"])


def test_mapper_null_columns_left_out_or_sent_empty() -> None:
    columns = ["order_id", "customer_name", "phone", "invoice_no", "contact_info.contact_person_email",
               "order_info.associate_fields.gst"]  # fmt: skip
    row = ["1", "Ann Example", None, "INV-1", None, {"rate": None, "code": "X"}]

    omitted = decoded(OrderMapper(columns).prepare(row).data)
    emptied = decoded(OrderMapper(columns, null_values="empty").prepare(row).data)

    assert omitted == {
        "customer_info": {"customer_name": "Ann Example"},
        "order_info": {
            "order_id": "1",
            "invoice_no": "INV-1",
            "associate_fields": {"gst": {"code": "X"}},
            "update": True,
        },
    }
    assert emptied["customer_info"] == {"customer_name": "Ann Example", "phone": ""}
    assert emptied["contact_info"] == [{"contact_person_email": ""}]
    assert emptied["order_info"]["associate_fields"] == {"gst": {"rate": "", "code": "X"}}


def test_mapper_row_mapper_nulls_follow_the_policy() -> None:
    columns = ["order_id", "customer_name", "invoice_no"]

    def mapper_output(row: dict[str, Any]) -> dict[str, Any]:
        return {"order_info": {"invoice_no": None, "remarks": None}}

    omitted = decoded(OrderMapper(columns, row_mapper=mapper_output).prepare(["1", "Ann", "INV-1"]).data)
    emptied = OrderMapper(columns, row_mapper=mapper_output, null_values="empty").prepare(["1", "Ann", "INV-1"])

    assert omitted["order_info"] == {"order_id": "1", "invoice_no": "INV-1", "update": True}
    assert decoded(emptied.data)["order_info"] == {"order_id": "1", "invoice_no": "", "remarks": "", "update": True}


def test_a_value_turning_null_changes_the_body_hash_under_omit() -> None:
    mapper = OrderMapper(["order_id", "customer_name", "invoice_no"])

    assert mapper.prepare(["1", "Ann", "INV-1"]).body_hash != mapper.prepare(["1", "Ann", None]).body_hash


@pytest.mark.parametrize("bad", ["skip", "", None, "Omit"])
def test_unknown_null_values_refused_naming_the_choices(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"null_values must be 'omit' .* or 'empty' .*got"):
        check_null_values(bad)
    with pytest.raises(ValueError, match="null_values must be"):
        OrderMapper(["order_id"], null_values=bad)


def test_scalars_kept_and_uuid_as_text() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")

    assert render_value(True, "f") is True
    assert render_value(42, "f") == 42
    assert render_value(1.5, "f") == 1.5
    assert render_value("text", "f") == "text"
    assert render_value(ident, "f") == "12345678-1234-5678-1234-567812345678"


def test_decimal_encoded_exactly() -> None:
    data = prepare_order(minimal(associate_fields={"amount": BIG})).data

    assert b"12345678901234567890.123456789" in data
    assert decoded(data)["order_info"]["associate_fields"]["amount"] == BIG
    assert encode_json({"a": BIG, "b": Decimal("0.10"), "c": Decimal("-0.000001")}) == (
        b'{"a":12345678901234567890.123456789,"b":0.10,"c":-0.000001}'
    )


@pytest.mark.parametrize("value", [Decimal("1E+3"), Decimal("1E-7"), Decimal("-0"), Decimal("123.4500")])
def test_decimal_encoding_is_valid_json(value: Decimal) -> None:
    data = encode_json({"v": render_value(value, "v")})

    assert decoded(data)["v"] == value


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")]
)
def test_non_finite_numbers_rejected_naming_the_field(value: Any) -> None:
    with pytest.raises(InvalidOrder) as caught:
        prepare_order(minimal(associate_fields={"amount": value}))

    assert caught.value.field == "order_info.associate_fields.amount"
    assert "finite" in caught.value.reason
    assert str(caught.value).startswith("order_info.associate_fields.amount:")


@pytest.mark.parametrize("value", [b"abc", bytearray(b"abc"), memoryview(b"abc")])
def test_binary_values_rejected(value: Any) -> None:
    with pytest.raises(InvalidOrder) as caught:
        prepare_order(minimal(invoice_no=value))

    assert caught.value.field == "order_info.invoice_no"
    assert "binary" in caught.value.reason


def test_lone_surrogate_rejected() -> None:
    with pytest.raises(InvalidOrder) as caught:
        prepare_order(minimal(remarks="bad \ud800 text"))

    assert caught.value.field == "order_info.remarks"
    assert "surrogate" in caught.value.reason


def test_unicode_text_kept() -> None:
    data = prepare_order(minimal(name="Zoë Ñúñez 李", remarks="ok ✓")).data

    assert decoded(data)["customer_info"]["customer_name"] == "Zoë Ñúñez 李"
    assert decoded(data)["order_info"]["remarks"] == "ok ✓"


def test_unsupported_type_rejected() -> None:
    with pytest.raises(InvalidOrder) as caught:
        prepare_order(minimal(associate_fields={"s": {1, 2}}))

    assert caught.value.field == "order_info.associate_fields.s"
    assert "set" in caught.value.reason


def test_nested_dicts_and_lists_in_associate_fields() -> None:
    body = minimal(
        associate_fields={
            "outer": {"inner": {"when": dt.date(2024, 5, 6), "amount": Decimal("9.99"), "none": None}},
            "tags": ["a", 1, dt.datetime(2024, 5, 6, 1, 2, 3)],
        }
    )

    rendered = decoded(prepare_order(body).data)["order_info"]["associate_fields"]

    assert rendered == {
        "outer": {"inner": {"when": "2024-05-06", "amount": Decimal("9.99")}},
        "tags": ["a", 1, "2024-05-06 01:02:03"],
    }


def test_nested_invalid_value_names_full_path() -> None:
    body = minimal(associate_fields={"outer": {"list": [1, float("nan")]}})

    with pytest.raises(InvalidOrder) as caught:
        prepare_order(body)

    assert caught.value.field == "order_info.associate_fields.outer.list.1"


# -- order ids and mandatory fields ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("000123", "000123"),
        ("  000123 ", "000123"),
        (123, "123"),
        (123.0, "123"),
        (Decimal("123.00"), "123"),
        ("A-17/x", "A-17/x"),
    ],
)
def test_order_id_rendered_as_text(value: Any, expected: str) -> None:
    assert render_order_id(value) == expected
    order = prepare_order(minimal(order_id=value))
    assert order.order_id == expected
    assert decoded(order.data)["order_info"]["order_id"] == expected


@pytest.mark.parametrize("value", [None, "", "   ", True])
def test_missing_order_id_rejected(value: Any) -> None:
    with pytest.raises(InvalidOrder) as caught:
        prepare_order(minimal(order_id=value))

    assert caught.value.field == "order_info.order_id"


def test_fractional_order_id_rejected() -> None:
    with pytest.raises(InvalidOrder) as caught:
        prepare_order(minimal(order_id=1.5))

    assert caught.value.field == "order_info.order_id"


@pytest.mark.parametrize("body", [{"customer_info": {"customer_name": "A"}}, {"order_info": "x"}])
def test_missing_order_info_section_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidOrder) as caught:
        prepare_order(body)

    assert caught.value.field == "order_info"


@pytest.mark.parametrize("name", [None, "", "  "])
def test_missing_customer_name_rejected(name: Any) -> None:
    with pytest.raises(InvalidOrder) as caught:
        prepare_order(minimal(name=name))

    assert caught.value.field == "customer_info.customer_name"


def test_non_mapping_body_rejected() -> None:
    with pytest.raises(InvalidOrder) as caught:
        prepare_order(["not", "a", "dict"])  # type: ignore[arg-type]

    assert caught.value.field == "order"


def test_body_hash_follows_content() -> None:
    first, again, other = (prepare_order(minimal()), prepare_order(minimal()), prepare_order(minimal(remarks="x")))

    assert first.body_hash == again.body_hash
    assert first.body_hash != other.body_hash
    assert len(first.body_hash) == 64


def test_prepare_order_does_not_modify_input() -> None:
    body = minimal(order_id=123, when=dt.date(2024, 1, 2))
    snapshot = repr(body)

    prepare_order(body)

    assert repr(body) == snapshot


# -- column mapping ---------------------------------------------------------------------------------------


def test_dotted_paths_and_bare_names() -> None:
    mapper = OrderMapper(
        [
            "order_id",
            "customer_name",
            "email_id",
            "contact_info.0.contact_person_phone",
            "contact_info.contact_person_email",
            "contact_info.1.first_name",
            "order_info.associate_fields.my_field",
            "order_info.remarks",
            "invoice_no",
            "subStatus",
        ]
    )

    order = mapper.prepare(
        ["000123", "Ann", "ann@example.com", "9380491257", "c@example.com", "Bob", Decimal("1.10"), "r", 77, "Open"]
    )

    assert order.order_id == "000123"
    assert decoded(order.data) == {
        "customer_info": {"customer_name": "Ann", "email_id": "ann@example.com"},
        "contact_info": [
            {"contact_person_phone": "9380491257", "contact_person_email": "c@example.com"},
            {"first_name": "Bob"},
        ],
        "enquiry_info": {"subStatus": "Open"},
        "order_info": {
            "order_id": "000123",
            "associate_fields": {"my_field": Decimal("1.10")},
            "remarks": "r",
            "invoice_no": 77,
            "update": True,
        },
    }


def test_deeper_associate_field_paths() -> None:
    mapper = OrderMapper(
        ["order_id", "customer_name", "order_info.associate_fields.a.b", "order_info.associate_fields.a.c"]
    )

    body = decoded(mapper.prepare(["1", "Ann", 1, 2]).data)

    assert body["order_info"]["associate_fields"] == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("order_id", ("order_info", None, ("order_id",))),
        ("invoice_no", ("order_info", None, ("invoice_no",))),
        ("email_id", ("customer_info", None, ("email_id",))),
        ("contact_person_phone", ("contact_info", 0, ("contact_person_phone",))),
        ("round_robin_key", ("enquiry_info", None, ("round_robin_key",))),
        ("contact_info.2.gender", ("contact_info", 2, ("gender",))),
        ("contact_info.gender", ("contact_info", 0, ("gender",))),
        ("order_info.associate_fields.my_field", ("order_info", None, ("associate_fields", "my_field"))),
    ],
)
def test_resolve_column(name: str, where: tuple[Any, ...]) -> None:
    assert resolve_column(name) == where


@pytest.mark.parametrize(
    ("name", "choices"),
    [
        ("remarks", ["customer_info.remarks", "enquiry_info.remarks", "order_info.remarks"]),
        ("update", ["customer_info.update", "contact_info.update", "enquiry_info.update", "order_info.update"]),
        (
            "associate_fields",
            ["customer_info.associate_fields", "enquiry_info.associate_fields", "order_info.associate_fields"],
        ),
        ("assign_emp_name", ["enquiry_info.assign_emp_name", "order_info.assign_emp_name"]),
    ],
)
def test_ambiguous_bare_name_names_the_choices(name: str, choices: list[str]) -> None:
    with pytest.raises(MappingError) as caught:
        OrderMapper(["order_id", "customer_name", name])

    text = str(caught.value)
    assert repr(name) in text
    for choice in choices:
        assert f"'{choice}'" in text


@pytest.mark.parametrize("name", ["bogus", "customer", "foo.bar", "order_info.", "contact_info.0", "contact_info"])
def test_unknown_or_empty_column_rejected(name: str) -> None:
    with pytest.raises(MappingError) as caught:
        OrderMapper(["order_id", "customer_name", name])

    assert repr(name) in str(caught.value)


def test_unknown_bare_name_suggests_alias() -> None:
    with pytest.raises(MappingError, match=r"order_info\.associate_fields\.bogus"):
        OrderMapper(["order_id", "customer_name", "bogus"])


def test_underscore_columns_never_in_body() -> None:
    mapper = OrderMapper(["_version", "order_id", "_shard", "customer_name", "_order_info.remarks"])

    order = mapper.prepare([7, "1", "s-1", "Ann", "hidden"])

    assert b"_version" not in order.data
    assert b"s-1" not in order.data
    assert b"hidden" not in order.data
    assert decoded(order.data) == {
        "order_info": {"order_id": "1", "update": True},
        "customer_info": {"customer_name": "Ann"},
    }


def test_missing_order_id_column_rejected() -> None:
    with pytest.raises(MappingError, match=r"order_info\.order_id"):
        OrderMapper(["customer_name", "invoice_no", "_order_id"])


def test_duplicate_and_colliding_columns_rejected() -> None:
    with pytest.raises(MappingError, match="duplicate"):
        OrderMapper(["order_id", "order_id"])
    with pytest.raises(MappingError, match=r"order_info\.order_id"):
        OrderMapper(["order_id", "order_info.order_id"])


def test_row_values_rendered_and_validated_with_path() -> None:
    mapper = OrderMapper(
        ["order_id", "customer_name", "invoice_date", "order_info.associate_fields.amount"], timezone="Asia/Kolkata"
    )

    body = decoded(mapper.prepare([5, "Ann", dt.datetime(2024, 1, 1, 0, 0, tzinfo=dt.UTC), BIG]).data)

    assert body["order_info"]["order_id"] == "5"
    assert body["order_info"]["invoice_date"] == "2024-01-01 05:30:00"
    assert body["order_info"]["associate_fields"]["amount"] == BIG
    with pytest.raises(InvalidOrder) as caught:
        mapper.prepare([5, "Ann", None, float("nan")])
    assert caught.value.field == "order_info.associate_fields.amount"
    with pytest.raises(InvalidOrder) as caught:
        mapper.prepare([None, "Ann", None, 1])
    assert caught.value.field == "order_info.order_id"


def test_explicit_update_column_wins_over_default() -> None:
    mapper = OrderMapper(["order_id", "customer_name", "order_info.update"])

    assert decoded(mapper.prepare(["1", "Ann", False]).data)["order_info"]["update"] is False


def test_row_mapper_merges_over_columns() -> None:
    seen: list[dict[str, Any]] = []

    def row_mapper(row: dict[str, Any]) -> dict[str, Any]:
        seen.append(row)
        return {
            "order_info": {
                "remarks": f"v{row['_version']}",
                "associate_fields": {"computed": row["_amount"] * 2, "when": dt.date(2024, 1, 2)},
            },
            "contact_info": [{"contact_person_phone": "1"}, {"contact_person_phone": "2"}],
        }

    mapper = OrderMapper(
        ["order_id", "customer_name", "order_info.remarks", "order_info.associate_fields.kept", "_version", "_amount"],
        row_mapper=row_mapper,
    )

    body = decoded(mapper.prepare(["9", "Ann", "from column", "k", 3, Decimal("1.25")]).data)

    assert seen == [
        {
            "order_id": "9",
            "customer_name": "Ann",
            "order_info.remarks": "from column",
            "order_info.associate_fields.kept": "k",
            "_version": 3,
            "_amount": Decimal("1.25"),
        }
    ]
    assert body["order_info"] == {
        "order_id": "9",
        "remarks": "v3",
        "associate_fields": {"kept": "k", "computed": Decimal("2.50"), "when": "2024-01-02"},
        "update": True,
    }
    assert body["contact_info"] == [{"contact_person_phone": "1"}, {"contact_person_phone": "2"}]
    assert body["customer_info"] == {"customer_name": "Ann"}


def test_row_mapper_can_supply_the_order_id() -> None:
    mapper = OrderMapper(
        ["_erp_key", "customer_name"], row_mapper=lambda row: {"order_info": {"order_id": f"ERP-{row['_erp_key']}"}}
    )

    order = mapper.prepare([41, "Ann"])

    assert order.order_id == "ERP-41"
    assert decoded(order.data) == {
        "customer_info": {"customer_name": "Ann"},
        "order_info": {"order_id": "ERP-41", "update": True},
    }


def test_row_mapper_values_are_validated() -> None:
    mapper = OrderMapper(
        ["order_id", "customer_name"], row_mapper=lambda row: {"order_info": {"associate_fields": {"x": b"raw"}}}
    )

    with pytest.raises(InvalidOrder) as caught:
        mapper.prepare(["1", "Ann"])

    assert caught.value.field == "order_info.associate_fields.x"


def test_column_overlapping_a_nested_column_is_rejected() -> None:
    with pytest.raises(MappingError):
        OrderMapper(["order_id", "customer_name", "order_info.associate_fields.x", "order_info.associate_fields"])
