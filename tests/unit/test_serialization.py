"""Unit tests for conductor_worker.serialization: output shape, value rules, errors, encoding."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import math
import sys
import types
import uuid
from typing import Any, ClassVar

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conductor_worker import serialization
from conductor_worker.errors import ConductorWorkerError
from conductor_worker.serialization import (
    MAX_DEPTH,
    RESULT_KEY,
    OutputSerializationError,
    encode_json,
    to_json_value,
    to_output_data,
)

UTC = datetime.timezone.utc
PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Shade(str, enum.Enum):
    DARK = "dark"


class Pair(enum.Enum):
    ORIGIN = (0, 0)


class Wrapped(enum.Enum):
    WHEN = datetime.date(2024, 1, 2)


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: str = "p"
    registry: ClassVar[int] = 0  # not a field: never serialized


@dataclasses.dataclass
class Route:
    points: list[Point]
    color: Color
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Node:
    name: str
    next: Node | None = None


class Item(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)

    item_id: int = pydantic.Field(alias="itemId")
    added: datetime.datetime
    score: float = 1.0


class Cart(pydantic.BaseModel):
    items: list[Item]
    note: str | None = None


class Masked(pydantic.BaseModel):
    secret: str

    @pydantic.field_serializer("secret")
    def _mask(self, value: str) -> str:
        return "*" * len(value)


class Blob(pydantic.BaseModel):
    data: bytes


class Numbers(pydantic.RootModel[list[int]]):
    pass


class Opaque:
    pass


def nested_lists(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def nested_dicts(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def error_of(value: object) -> OutputSerializationError:
    with pytest.raises(OutputSerializationError) as info:
        to_output_data(value)
    return info.value


# --- output shape -----------------------------------------------------------------------------


def test_none_becomes_an_empty_object() -> None:
    assert to_output_data(None) == {}


def test_str_keyed_dict_becomes_a_fresh_equal_object() -> None:
    value = {"a": 1, "b": [1, "x", None, True, 2.5], "c": {"d": None}}

    out = to_output_data(value)

    assert out == value
    assert out is not value  # later changes to the worker's dict cannot alter what is sent
    assert out["b"] is not value["b"]


def test_other_mappings_become_objects() -> None:
    ordered = collections.OrderedDict([("z", 1), ("a", 2)])

    assert to_output_data(types.MappingProxyType({"k": "v"})) == {"k": "v"}
    assert list(to_output_data(ordered)) == ["z", "a"]
    assert type(to_output_data(collections.defaultdict(list, {"k": [1]}))) is dict


def test_dataclass_instance_becomes_its_fields() -> None:
    out = to_output_data(Route(points=[Point(1, 2)], color=Color.RED))

    assert out == {
        "points": [{"x": 1, "y": 2, "label": "p"}],
        "color": "red",
        "meta": {},
    }


def test_pydantic_model_uses_json_mode_dump_by_alias() -> None:
    cart = Cart(items=[Item(item_id=7, added=datetime.datetime(2024, 5, 6, tzinfo=UTC))])

    out = to_output_data(cart)

    assert out == cart.model_dump(mode="json", by_alias=True)
    assert out["items"][0]["itemId"] == 7
    assert isinstance(out["items"][0]["added"], str)


def test_pydantic_model_serializers_are_honoured() -> None:
    assert to_output_data(Masked(secret="hunter2")) == {"secret": "*******"}


def test_root_model_that_dumps_to_a_list_is_wrapped() -> None:
    assert to_output_data(Numbers([3, 1])) == {RESULT_KEY: [3, 1]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1, "a"], [1, "a"]),
        ("text", "text"),
        (0, 0),
        (2.5, 2.5),
        (False, False),
        ((1, 2), [1, 2]),
        (Color.BLUE, "blue"),
        (datetime.date(2024, 1, 2), "2024-01-02"),
    ],
)
def test_other_values_are_wrapped_under_the_result_key(value: object, expected: object) -> None:
    assert RESULT_KEY == "result"
    assert to_output_data(value) == {"result": expected}


# --- value conversion rules -------------------------------------------------------------------


def test_enums_become_their_converted_values() -> None:
    assert to_json_value(Color.RED) == "red"
    assert to_json_value(Level.HIGH) == 2
    assert type(to_json_value(Level.HIGH)) is int
    assert type(to_json_value(Shade.DARK)) is str
    assert to_json_value(Pair.ORIGIN) == [0, 0]
    assert to_json_value(Wrapped.WHEN) == "2024-01-02"


def test_uuid_becomes_its_canonical_string() -> None:
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")

    assert to_json_value(value) == "12345678-1234-5678-1234-567812345678"


def test_dates_and_times_become_iso_8601_keeping_the_offset() -> None:
    aware = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=PLUS_TWO)

    assert to_json_value(aware) == "2024-05-06T07:08:09.123456+02:00"
    assert to_json_value(datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)) == (
        "2024-05-06T07:08:09+00:00"
    )
    assert to_json_value(datetime.datetime(2024, 5, 6, 7, 8)) == "2024-05-06T07:08:00"
    assert to_json_value(datetime.date(2024, 5, 6)) == "2024-05-06"
    assert to_json_value(datetime.time(7, 8, 9, tzinfo=PLUS_TWO)) == "07:08:09+02:00"


def test_timedelta_becomes_total_seconds() -> None:
    assert to_json_value(datetime.timedelta(minutes=1, milliseconds=500)) == 60.5
    assert to_json_value(datetime.timedelta(days=-1)) == -86400.0
    assert type(to_json_value(datetime.timedelta(seconds=3))) is float


def test_decimal_becomes_a_string_keeping_precision() -> None:
    assert to_json_value(decimal.Decimal("0.10")) == "0.10"
    assert to_json_value(decimal.Decimal("12345678901234567890.123456789")) == (
        "12345678901234567890.123456789"
    )


def test_sets_become_sorted_lists_when_orderable() -> None:
    assert to_json_value({3, 1, 2}) == [1, 2, 3]
    assert to_json_value(frozenset({"b", "a"})) == ["a", "b"]
    assert to_json_value({Level.HIGH, Level.LOW}) == [1, 2]  # sorted after conversion


def test_unorderable_sets_become_lists_of_all_items() -> None:
    out = to_json_value({1, "a", None})

    assert isinstance(out, list)
    assert sorted(out, key=repr) == sorted([1, "a", None], key=repr)


def test_bytes_become_standard_base64() -> None:
    assert to_json_value(b"\xfb\xff\xbf") == "+/+/"  # standard alphabet, not URL-safe
    assert to_json_value(bytearray(b"hi")) == "aGk="
    assert to_json_value(b"") == ""


def test_subclasses_of_json_types_become_the_plain_types() -> None:
    class Name(str):
        def __str__(self) -> str:
            return "overridden"

    class Count(int):
        pass

    class Ratio(float):
        pass

    out = to_json_value([Name("n"), Count(3), Ratio(0.5)])

    assert out == ["n", 3, 0.5]
    assert [type(v) for v in out] == [str, int, float]


def test_nested_structures_anywhere() -> None:
    item = Item(item_id=1, added=datetime.datetime(2024, 1, 1, tzinfo=UTC))
    value = {
        "route": Route(points=[Point(0, 1, "a")], color=Color.BLUE, meta={"ids": {2, 1}}),
        "models": [item],
        "tuple": (Point(5, 6), b"\x00"),
    }

    assert to_output_data(value) == {
        "route": {
            "points": [{"x": 0, "y": 1, "label": "a"}],
            "color": "blue",
            "meta": {"ids": [1, 2]},
        },
        "models": [item.model_dump(mode="json", by_alias=True)],
        "tuple": [{"x": 5, "y": 6, "label": "p"}, "AA=="],
    }


def test_shared_references_that_are_not_cycles_are_fine() -> None:
    shared = [1, 2]

    assert to_output_data({"a": shared, "b": shared, "c": [shared, shared]}) == {
        "a": [1, 2],
        "b": [1, 2],
        "c": [[1, 2], [1, 2]],
    }


# --- mapping keys -----------------------------------------------------------------------------


def test_int_float_bool_enum_and_uuid_keys_become_strings() -> None:
    key = uuid.UUID(int=1)

    out = to_output_data(
        {1: "int", 2.5: "float", False: "bool", Color.RED: "enum", Level.HIGH: "intenum", key: "u"}
    )

    assert out == {
        "1": "int",
        "2.5": "float",
        "false": "bool",
        "red": "enum",
        "2": "intenum",
        "00000000-0000-0000-0000-000000000001": "u",
    }


@pytest.mark.parametrize(
    ("key", "kind"),
    [((1, 2), "tuple"), (None, "NoneType"), (frozenset(), "frozenset"), (Pair.ORIGIN, "tuple")],
)
def test_other_keys_are_errors(key: object, kind: str) -> None:
    error = error_of({"outer": {key: 1}})

    assert str(error).startswith(f"$.outer: cannot use a key of type {kind} in a JSON object")
    assert error.path == "$.outer"


def test_non_finite_float_key_is_an_error() -> None:
    assert "float NaN is not valid JSON" in str(error_of({math.nan: 1}))


def test_keys_that_collide_after_conversion_are_an_error() -> None:
    error = error_of({"x": {1: "int", "1": "str"}})

    assert str(error) == "$.x: keys 1 and '1' both become the object key '1'"


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"), [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")]
)
def test_non_finite_floats_are_errors_naming_the_path(value: float, name: str) -> None:
    items = [{"value": 1.0}, {"value": 2.0}, {"value": 3.0}, {"value": value}]

    error = error_of({"items": items})

    assert str(error) == f"$.items[3].value: float {name} is not valid JSON"
    assert error.path == "$.items[3].value"
    assert isinstance(error, ConductorWorkerError)


def test_non_finite_float_path_under_the_result_key() -> None:
    assert str(error_of([1.0, math.nan])) == "$.result[1]: float NaN is not valid JSON"


def test_non_finite_float_inside_a_dataclass_and_a_model() -> None:
    bad_item = Item(item_id=1, added=datetime.datetime(2024, 1, 1), score=math.inf)

    assert error_of({"p": Point(1, math.nan)}).path == "$.p.y"  # type: ignore[arg-type]
    assert error_of({"cart": Cart(items=[bad_item])}).path == "$.cart.items[0].score"
    assert error_of({"r": Route(points=[], color=Color.RED, meta={"m": math.nan})}).path == (
        "$.r.meta.m"
    )


def test_unknown_types_are_errors_naming_type_and_path() -> None:
    error = error_of({"a": [1, {"b": Opaque()}]})

    assert str(error) == f"$.a[1].b: cannot serialize object of type {__name__}.Opaque"
    assert "cannot serialize object of type generator" in str(
        error_of({"g": (i for i in range(0))})
    )
    assert "cannot serialize object of type type" in str(error_of({"cls": Point}))


def test_model_that_pydantic_cannot_dump_is_an_error_at_its_path() -> None:
    error = error_of({"blobs": [Blob(data=b"\xff")]})

    assert error.path == "$.blobs[0]"
    assert f"cannot serialize pydantic model {__name__}.Blob" in str(error)


def test_cycles_are_errors_naming_the_path() -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    assert str(error_of({"a": {"b": looped}})) == (
        "$.a.b[1]: circular reference: this list contains itself"
    )

    mapping: dict[str, Any] = {}
    mapping["self"] = mapping
    assert error_of(mapping).path == "$.self"

    head = Node("a", Node("b"))
    assert head.next is not None
    head.next.next = head
    assert str(error_of(head)) == (
        f"$.next.next: circular reference: this {__name__}.Node contains itself"
    )

    through_tuple: list[Any] = []
    through_tuple.append((through_tuple,))
    assert error_of(through_tuple).path == "$.result[0][0]"


def test_nesting_up_to_the_limit_is_fine_and_beyond_is_an_error() -> None:
    assert MAX_DEPTH == 500
    assert to_json_value(nested_lists(MAX_DEPTH)) is not None
    assert to_output_data(nested_dicts(MAX_DEPTH))

    error = error_of(nested_dicts(MAX_DEPTH + 1))
    assert str(error).endswith(f": nesting deeper than {MAX_DEPTH} levels")
    with pytest.raises(OutputSerializationError, match="nesting deeper than 500 levels"):
        to_json_value(nested_lists(MAX_DEPTH + 1))


def test_very_deep_nesting_is_an_error_not_a_crash() -> None:
    error = error_of(nested_lists(100_000))

    assert "nesting deeper than" in str(error)
    assert len(str(error)) < 300  # the path is abbreviated
    assert "..." in error.path


def test_recursion_limit_reached_by_the_caller_is_reported() -> None:
    value = nested_lists(400)
    depth = 0
    frame: types.FrameType | None = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back

    def dive(remaining: int) -> object:
        if remaining == 0:
            return to_json_value(value)
        return dive(remaining - 1)

    with pytest.raises(OutputSerializationError, match="recursion limit"):
        dive(sys.getrecursionlimit() - depth - 100)


def test_path_segments_for_unusual_keys() -> None:
    assert error_of({"a b": math.nan}).path == "$['a b']"
    assert error_of({"1x": {"ok": math.nan}}).path == "$['1x'].ok"
    assert error_of({7: math.nan}).path == "$['7']"


# --- encode_json ------------------------------------------------------------------------------


def test_encode_json_is_compact_utf8() -> None:
    text = '{"a":[1,2.5,null,true],"b":{"c":"é€😀"}}'

    data = encode_json({"a": [1, 2.5, None, True], "b": {"c": "é€😀"}})

    assert data == text.encode()
    assert len(data) == len(text) + 1 + 2 + 3  # bytes: é is 2 bytes, € 3, 😀 4


def test_encode_json_rejects_non_finite_floats() -> None:
    with pytest.raises(OutputSerializationError, match=r"^\$: cannot encode as JSON"):
        encode_json({"a": math.nan})


def test_encode_json_rejects_unconverted_values() -> None:
    with pytest.raises(OutputSerializationError, match=r"^\$: cannot encode as JSON"):
        encode_json({"a": Opaque()})


def test_encode_json_rejects_lone_surrogates_with_their_path() -> None:
    with pytest.raises(OutputSerializationError) as info:
        encode_json({"a": ["fine", "bad \udc80 string"]})

    assert str(info.value) == (
        "$.a[1]: string contains the lone surrogate U+DC80, which cannot be encoded as UTF-8"
    )
    assert info.value.path == "$.a[1]"

    with pytest.raises(OutputSerializationError, match=r"lone surrogate U\+D800") as info:
        encode_json({"ok": {"\ud800": 1}})
    assert info.value.path.startswith("$.ok[")


def test_encode_json_reports_excessive_nesting() -> None:
    with pytest.raises(OutputSerializationError, match="nested too deeply"):
        encode_json(nested_lists(100_000))


def test_module_exports() -> None:
    assert sorted(serialization.__all__) == sorted(
        [
            "MAX_DEPTH",
            "RESULT_KEY",
            "OutputSerializationError",
            "encode_json",
            "to_json_value",
            "to_output_data",
        ]
    )


# --- properties -------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children),
    max_leaves=40,
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(json_values)
def test_json_values_round_trip_unchanged(value: Any) -> None:
    expected = value if isinstance(value, dict) else {RESULT_KEY: value}
    if value is None:
        expected = {}

    out = to_output_data(value)

    assert out == expected
    assert json.loads(encode_json(out)) == expected


any_text = st.text(alphabet=st.characters(exclude_categories=()) | st.characters(categories=["Cs"]))
hashable_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | any_text
    | st.uuids()
    | st.sampled_from([*Color, *Level, *Pair])
    | st.tuples(st.integers())
    | st.frozensets(st.integers(), max_size=3)
)
wild_scalars = (
    hashable_values
    | st.binary(max_size=8)
    | st.decimals()
    | st.datetimes(timezones=st.sampled_from([None, UTC, PLUS_TWO]))
    | st.timedeltas()
    | st.builds(Opaque)
)
wild_values = st.recursive(
    wild_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(hashable_values, children, max_size=4)
        | st.sets(hashable_values, max_size=4)
        | st.builds(Point, x=st.integers(), y=st.integers(), label=any_text)
    ),
    max_leaves=30,
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(wild_values)
def test_arbitrary_values_succeed_or_raise_only_output_serialization_error(value: Any) -> None:
    error: OutputSerializationError | None = None
    try:
        data = encode_json(to_output_data(value))
    except OutputSerializationError as exc:
        error = exc
    if error is None:
        assert isinstance(json.loads(data), dict)
    else:
        assert error.path.startswith("$")
        assert str(error).startswith(f"{error.path}: ")


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.integers(min_value=1, max_value=3 * MAX_DEPTH), st.booleans())
def test_arbitrary_nesting_succeeds_or_raises_only_output_serialization_error(
    levels: int, use_dicts: bool
) -> None:
    value: Any = nested_dicts(levels) if use_dicts else nested_lists(levels)
    # A list is wrapped under RESULT_KEY, which adds the object around it as one more level.
    limit = MAX_DEPTH if use_dicts else MAX_DEPTH - 1
    error: OutputSerializationError | None = None
    try:
        data = encode_json(to_output_data(value))
    except OutputSerializationError as exc:
        error = exc
    if error is None:
        assert levels <= limit
        assert isinstance(json.loads(data), dict)
    else:
        assert "nesting deeper than" in str(error)
        assert levels > limit
