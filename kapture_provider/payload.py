"""Turn warehouse rows and hand-written dicts into Kapture order bodies.

The documented body has four sections: ``customer_info``, ``contact_info`` (a list), ``enquiry_info``
and ``order_info``. A flat row reaches them by column name:

* a dotted path: ``order_info.order_id``, ``contact_info.0.contact_person_phone``,
  ``order_info.associate_fields.my_field`` (``contact_info.x`` means ``contact_info.0.x``);
* a bare field name that exists in exactly one section: ``order_id``, ``invoice_no``, ``email_id``…;
* columns starting with ``_`` are control columns (versions, shard keys) and are never sent.

Values are rendered the same way for both operators (see :func:`render_value`), validated with a
reason naming the field, and encoded into canonical JSON bytes whose hash drives change detection.
A NULL (``None``) is left out of the body by default, so that Kapture keeps what it holds, or sent as
``""``, clearing the field (``null_values``; see docs/null-values.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, cast

import pendulum

SECTIONS: dict[str, tuple[str, ...]] = {
    "customer_info": (
        "customer_name", "phone", "email_id", "locality", "city", "state", "country", "address", "type",
        "classification", "pincode", "customer_code", "customer_id", "customer_assign_emp_name",
        "customer_assign_emp_code", "customer_assign_emp_email", "zone", "customer_remarks", "individual",
        "organization", "channel_partner", "remarks", "primary_source", "secondary_source",
        "tertiary_source", "additional_fields", "associate_fields", "update",
    ),
    "contact_info": (
        "contact_id", "title", "first_name", "last_name", "contact_person_name", "country_code",
        "contact_person_phone", "contact_person_email", "additional_contact_phone", "dob", "gender",
        "update", "matchEmailPhone",
    ),
    "enquiry_info": (
        "enquiry_id", "assign_emp_name", "assign_emp_code", "assign_emp_email", "round_robin_key",
        "next_follow_up_date", "action", "subStatus", "additional_fields", "associate_fields", "update",
        "remarks",
    ),
    "order_info": (
        "order_id", "assign_emp_name", "assign_emp_code", "assign_emp_email", "delivery_status",
        "erp_order_id", "erp_invoice_no", "create_date", "remarks", "invoice_no", "invoice_date",
        "unit_name", "block_name", "ticket_id", "encryptOrder", "payment_mode", "dealDetails",
        "associate_fields", "update",
    ),
}  # fmt: skip
LIST_SECTION = "contact_info"
ORDER_ID_PATH = "order_info.order_id"
CUSTOMER_NAME_PATH = "customer_info.customer_name"
#: Fields that carry personal data; never copied into summaries, logs or errors.
PERSONAL_FIELDS = frozenset(
    {"customer_name", "phone", "email_id", "address", "first_name", "last_name", "contact_person_name",
     "contact_person_phone", "contact_person_email", "additional_contact_phone", "dob"}
)  # fmt: skip

#: What a NULL becomes: "omit" leaves the field out of the body (Kapture keeps its value), "empty" sends "".
NullValues = Literal["omit", "empty"]
NULL_VALUES: tuple[NullValues, ...] = ("omit", "empty")
#: Never left out: a NULL here makes the order invalid, with the reason naming the field.
MANDATORY_PATHS = frozenset({ORDER_ID_PATH, CUSTOMER_NAME_PATH})

#: Longer order ids are refused: the change ledger keys orders by a VARCHAR(255).
MAX_ORDER_ID_LENGTH = 255
#: Integers longer than this are refused: Python turns at most 4,300 digits into text (2**13000 has 3,914).
_MAX_INT_BITS = 13_000

_FIELD_SECTIONS: dict[str, list[str]] = {}
for _section, _fields in SECTIONS.items():
    for _field in _fields:
        _FIELD_SECTIONS.setdefault(_field, []).append(_section)


class MappingError(ValueError):
    """The columns cannot be mapped to an order body. Raised before anything is sent."""


class InvalidOrder(ValueError):
    """One order cannot be sent; ``field`` names the offending field, ``reason`` says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class PreparedOrder:
    """A validated order, ready to send: its id, the JSON bytes to POST and their hash."""

    order_id: str
    data: bytes
    body_hash: str


def personal_values(body: Any) -> list[str]:
    """The texts of every personal field (:data:`PERSONAL_FIELDS`) in an order body, at any depth."""
    found: list[str] = []
    if isinstance(body, Mapping):
        for key, item in body.items():
            if key in PERSONAL_FIELDS and isinstance(item, str | int) and str(item).strip():
                found.append(str(item))
            else:
                found.extend(personal_values(item))
    elif isinstance(body, list | tuple):
        for item in body:
            found.extend(personal_values(item))
    return found


def check_null_values(null_values: str) -> NullValues:
    """``null_values`` if it is one of :data:`NULL_VALUES`, else a ``ValueError`` saying what each one does."""
    if null_values not in NULL_VALUES:
        raise ValueError(
            f"null_values must be 'omit' (a NULL field is left out of the body: Kapture keeps its value) or "
            f"'empty' (a NULL is sent as \"\": Kapture clears the field), got {null_values!r}"
        )
    return cast(NullValues, null_values)


def without_nulls(value: Any) -> Any:
    """A mapping or list without its ``None`` values and items, at any depth; other values as they are."""
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [without_nulls(v) for v in value if v is not None]
    return value


def render_value(value: Any, field: str, timezone: str = "UTC") -> Any:
    """Render one value the way Kapture expects it.

    ``None`` → ``""`` (Kapture's own "no value"; under ``null_values="omit"`` the callers leave it out
    first, see :func:`without_nulls`); aware datetimes → converted to ``timezone`` and
    written ``yyyy-MM-dd HH:mm:ss`` (naive ones are taken to be in ``timezone`` already); dates →
    ``yyyy-MM-dd``; times → ``HH:mm:ss``; ``Decimal`` → an exact JSON number; UUID → text; dicts and
    lists recursively. NaN, ±Infinity, bytes, lone surrogates and other types are refused.
    """
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidOrder(field, "text is not valid Unicode (lone surrogate)") from None
        return value
    if value is None:
        return ""
    if isinstance(value, bool | int):
        if value.bit_length() > _MAX_INT_BITS:
            raise InvalidOrder(field, "integer of more than 3,900 digits")
        return value
    if isinstance(value, float | Decimal):
        if (isinstance(value, float) and not math.isfinite(value)) or (
            isinstance(value, Decimal) and not value.is_finite()
        ):
            raise InvalidOrder(field, f"{value} is not a finite number (JSON has no NaN or Infinity)")
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            try:  # by the value's own UTC offset (a wall time in a DST gap keeps the offset it shows)
                value = value.astimezone(pendulum.timezone(timezone))
            except OverflowError:
                raise InvalidOrder(field, f"date and time out of range in {timezone}") from None
        return f"{value.year:04d}-{value:%m-%d %H:%M:%S}"  # %Y does not pad years before 1000
    if isinstance(value, dt.date):
        return f"{value.year:04d}-{value:%m-%d}"
    if isinstance(value, dt.time):
        return value.strftime("%H:%M:%S")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        rendered = {}
        for k, v in value.items():
            key = str(k)
            path = f"{field}.{key}" if key.isprintable() else f"{field}.{_escaped(key)}"
            render_value(key, path, timezone)  # a key with a lone surrogate cannot be encoded either
            rendered[key] = render_value(v, path, timezone)
        return rendered
    if isinstance(value, list | tuple):
        return [render_value(v, f"{field}.{i}", timezone) for i, v in enumerate(value)]
    if isinstance(value, bytes | bytearray | memoryview):
        raise InvalidOrder(field, "binary value; decode it to text in the query")
    raise InvalidOrder(field, f"unsupported type {type(value).__name__}")


def render_order_id(value: Any) -> str:
    """Order ids travel as text exactly as stored (``000123`` stays ``000123``; ``123`` → ``"123"``)."""
    if isinstance(value, str):
        text = render_value(value, ORDER_ID_PATH).strip()  # refuses a lone surrogate, which no database stores
    elif isinstance(value, bool) or value is None:
        text = ""
    elif isinstance(value, int) and value.bit_length() <= _MAX_INT_BITS:
        text = str(value)
    elif _whole_number(value):
        text = str(int(value))
    else:
        raise InvalidOrder(ORDER_ID_PATH, f"order id must be text or a whole number, got {type(value).__name__}")
    if not text:
        raise InvalidOrder(ORDER_ID_PATH, "is missing or empty (mandatory)")
    if len(text) > MAX_ORDER_ID_LENGTH:
        raise InvalidOrder(ORDER_ID_PATH, f"is longer than {MAX_ORDER_ID_LENGTH} characters (the ledger's key)")
    return text


def _whole_number(value: Any) -> bool:
    """A finite float or Decimal without a fraction (a signalling NaN cannot even be compared)."""
    if not isinstance(value, float | Decimal) or (isinstance(value, Decimal) and value.is_snan()):
        return False
    return math.isfinite(value) and value == int(value)  # within a float's range: at most 309 digits


def _escaped(key: str) -> str:
    """A dict key for an error text: control characters, lone surrogates and the like escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in key)


class _HasDecimal(Exception):
    """Raised inside the C encoder when it meets a ``Decimal``, which it cannot write exactly."""


def _no_decimal(value: Any) -> Any:
    if isinstance(value, Decimal):
        raise _HasDecimal
    raise TypeError(f"cannot encode {type(value).__name__}")  # render_value admits nothing else


#: The standard library's C encoder, writing the same bytes as :func:`_encode` for everything but ``Decimal``.
_C_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":"), default=_no_decimal)


def encode_json(value: Any) -> bytes:
    """Encode rendered values as compact UTF-8 JSON, writing ``Decimal`` digits exactly.

    Bodies without a ``Decimal`` go through the C encoder; the others through :func:`_encode`, which
    writes a ``Decimal``'s own digits (the C encoder could only write it as a rounded float).
    """
    try:
        return _C_ENCODER.encode(value).encode("utf-8")
    except _HasDecimal:
        parts: list[str] = []
        _encode(value, parts)
        return "".join(parts).encode("utf-8")


_encode_str: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _encode(value: Any, parts: list[str]) -> None:
    if isinstance(value, str):
        parts.append(_encode_str(value))
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif value is None:
        parts.append("null")
    elif isinstance(value, int):
        parts.append(int.__repr__(value))
    elif isinstance(value, float):
        parts.append(float.__repr__(value))
    elif isinstance(value, Decimal):
        parts.append(str(value))
    elif isinstance(value, dict):
        parts.append("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                parts.append(",")
            parts.append(_encode_str(key))
            parts.append(":")
            _encode(item, parts)
        parts.append("}")
    elif isinstance(value, list):
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _encode(item, parts)
        parts.append("]")
    else:  # render_value admits nothing else
        raise TypeError(f"cannot encode {type(value).__name__}")


def finish_order(body: dict[str, Any]) -> PreparedOrder:
    """Check the mandatory fields of a rendered body and encode it."""
    order_info = body.get("order_info")
    if not isinstance(order_info, dict):
        raise InvalidOrder("order_info", "section is missing (order_info.order_id is mandatory)")
    order_id = render_order_id(order_info.get("order_id"))
    order_info["order_id"] = order_id
    customer = body.get("customer_info")
    name = customer.get("customer_name") if isinstance(customer, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise InvalidOrder(CUSTOMER_NAME_PATH, "is missing or empty (mandatory)")
    data = encode_json(body)
    return PreparedOrder(order_id, data, hashlib.sha256(data).hexdigest())


def prepare_order(body: Mapping[str, Any], timezone: str = "UTC", null_values: NullValues = "omit") -> PreparedOrder:
    """Validate and encode one hand-written order body in the documented nested shape.

    ``null_values``: ``"omit"`` leaves every ``None`` out of the body, ``"empty"`` sends it as ``""``.
    """
    if not isinstance(body, Mapping):
        raise InvalidOrder("order", f"an order body must be a mapping, got {type(body).__name__}")
    if check_null_values(null_values) == "omit":
        body = without_nulls(body)
    rendered = {str(k): render_value(v, str(k), timezone) for k, v in body.items()}
    return finish_order(rendered)


@dataclass(frozen=True)
class _Target:
    column: int
    section: str
    index: int | None  # position in contact_info, else None
    keys: tuple[str, ...]  # field, then nested keys inside a dict field

    @property
    def path(self) -> str:
        middle = [] if self.index is None else [str(self.index)]
        return ".".join([self.section, *middle, *self.keys])


def resolve_column(name: str) -> tuple[str, int | None, tuple[str, ...]] | None:
    """Where a column lands in the body: ``(section, contact index, keys)``; ``None`` for control columns.

    Raises :class:`MappingError` for a name that is unknown or ambiguous, naming the choices.
    """
    if name.startswith("_"):
        return None
    parts = name.split(".")
    if len(parts) == 1:
        sections = _FIELD_SECTIONS.get(name)
        if not sections:
            raise MappingError(
                f"column {name!r} is not a Kapture order field; alias it to a dotted path such as "
                f"'order_info.associate_fields.{name}', or prefix it with '_' to keep it out of the body"
            )
        if len(sections) > 1:
            choices = ", ".join(f"'{s}.{name}'" for s in sections)
            raise MappingError(f"column {name!r} exists in several sections; alias it to one of {choices}")
        parts = [sections[0], name]
    section, rest = parts[0], parts[1:]
    if section not in SECTIONS:
        raise MappingError(f"column {name!r}: unknown section {section!r}; use one of {', '.join(SECTIONS)}")
    index = None
    if section == LIST_SECTION:
        index = 0
        if rest and rest[0].isdigit():
            index, rest = int(rest[0]), rest[1:]
    if not rest or not all(rest):
        raise MappingError(f"column {name!r} names no field inside {section!r}")
    return section, index, tuple(rest)


class OrderMapper:
    """Maps flat rows with known column names to prepared orders.

    :param columns: the column names, in row order (from the cursor description).
    :param timezone: timezone datetimes are written in.
    :param row_mapper: optional callable that receives the row as a dict (control columns included) and
        returns a partial nested body, merged over what the columns give. For mappings column names
        cannot express (computed fields, several contacts from one row…).
    :param null_values: ``"omit"`` leaves a NULL column (and ``None`` inside values and in what
        ``row_mapper`` returns) out of the body; ``"empty"`` sends it as ``""``. The mandatory order id
        and customer name are never left out: a NULL there makes the row invalid.
    """

    def __init__(
        self,
        columns: Sequence[str],
        *,
        timezone: str = "UTC",
        row_mapper: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
        null_values: NullValues = "omit",
    ):
        self.columns = list(columns)
        self.timezone = timezone
        self.row_mapper = row_mapper
        self._omit_nulls = check_null_values(null_values) == "omit"
        duplicates = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if duplicates:
            raise MappingError(f"duplicate column names {duplicates}; give each column its own alias")
        targets = []
        for position, name in enumerate(self.columns):
            where = resolve_column(name)
            if where is not None:
                targets.append(_Target(position, *where))
        paths = [t.path for t in targets]
        collisions = sorted({p for p in paths if paths.count(p) > 1})
        if collisions:
            raise MappingError(f"several columns map to {collisions}; keep one per field")
        nested = sorted({(a, b) for a in paths for b in paths if b.startswith(a + ".")})
        if nested:
            pairs = ", ".join(f"{a!r} and {b!r}" for a, b in nested)
            raise MappingError(f"columns map to a field and to a field inside it ({pairs}); keep one of each pair")
        if ORDER_ID_PATH not in paths and row_mapper is None:
            raise MappingError(
                f"no column maps to {ORDER_ID_PATH} (mandatory); select it as 'order_id' or '{ORDER_ID_PATH}'"
            )
        section_order = list(SECTIONS)
        ordered = sorted(targets, key=lambda t: section_order.index(t.section))  # documented order
        # per target, what prepare() reads for every row: column, path, section, contact index, parent keys, key
        self._plan = [(t.column, t.path, t.section, t.index, t.keys[:-1], t.keys[-1]) for t in ordered]
        self._sets_update_flag = "order_info.update" in paths

    def prepare(self, row: Sequence[Any]) -> PreparedOrder:
        """Build, validate and encode the order of one row; raises :class:`InvalidOrder`."""
        body: dict[str, Any] = {}
        tz, omit_nulls = self.timezone, self._omit_nulls
        for column, path, section_name, index, parents, key in self._plan:
            value = row[column]
            if type(value) is not str or not value.isascii():  # ASCII text, the commonest value, is sent as it is
                if omit_nulls:
                    if value is None and path not in MANDATORY_PATHS:
                        continue
                    value = without_nulls(value)
                value = render_value(value, path, tz)
            section = body.get(section_name)
            if index is None:
                if section is None:
                    section = body[section_name] = {}
                holder = section
            else:
                if section is None:
                    section = body[section_name] = []
                while len(section) <= index:
                    section.append({})
                holder = section[index]
            for parent in parents:
                holder = holder.setdefault(parent, {})
                if not isinstance(holder, dict):
                    raise InvalidOrder(path, f"{parent!r} is both a value and a nested object")
            holder[key] = value
        if self.row_mapper is not None:
            extra = self.row_mapper(dict(zip(self.columns, row, strict=True)))
            if omit_nulls:
                extra = without_nulls(extra)
            _merge(body, {str(k): render_value(v, str(k), tz) for k, v in extra.items()})
        if not self._sets_update_flag and isinstance(body.get("order_info"), dict):
            body["order_info"].setdefault("update", True)
        return finish_order(body)


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        current = into.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            _merge(current, value)
        else:
            into[key] = value
