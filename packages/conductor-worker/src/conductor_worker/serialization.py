"""Turn a worker's return value into a task's JSON ``outputData``, and encode it.

:func:`to_output_data` decides the shape of the output:

* ``None`` → ``{}``
* a mapping (normally a ``dict`` with ``str`` keys) → a JSON object with the same keys
* a dataclass instance → its fields as an object
* a pydantic model → ``model_dump(mode="json", by_alias=True)`` (the model's own serializers and
  aliases apply; a root model whose dump is not an object is wrapped like any other value)
* anything else (list, str, int, float, bool, ...) → ``{"result": value}`` (:data:`RESULT_KEY`)

Values anywhere inside are converted by these rules (:func:`to_json_value`):

==================================  =======================================================
``str``, ``int``, ``bool``, None    unchanged (subclasses become the plain type)
``float``                           unchanged; NaN and ±Infinity are errors: they are not
                                    JSON and the server's Jackson parser rejects them
``Enum``                            its ``value``, converted by these rules
``uuid.UUID``                       ``str(u)``
``datetime``, ``date``, ``time``    ``isoformat()`` (ISO 8601; a timezone offset is kept,
                                    a naive value stays naive)
``timedelta``                       ``total_seconds()`` as a float
``Decimal``                         ``str(d)``: a string, because a JSON number would be
                                    read back as a binary float and lose precision
``list``, ``tuple``                 a list
``set``, ``frozenset``              a list, sorted when the converted items are orderable,
                                    otherwise in iteration order
``bytes``, ``bytearray``            standard base64 (``+/`` alphabet, ``=`` padded)
mappings                            objects; ``str`` keys as they are; ``int``/``float``/
                                    ``bool``/``Enum``/``UUID`` keys become strings (``bool``
                                    as ``"true"``/``"false"``, an ``Enum`` by its value);
                                    any other key, or two keys that become the same string,
                                    is an error
dataclass instances                 objects of their fields
pydantic models                     ``model_dump(mode="json", by_alias=True)``
anything else                       an error
==================================  =======================================================

Every failure is an :class:`OutputSerializationError` whose message starts with the JSON path of
the offending value, e.g. ``$.items[3].value: float NaN is not valid JSON``; circular references
and nesting deeper than :data:`MAX_DEPTH` levels are reported the same way instead of exhausting
the stack.

The result is always built from new containers, so what is sent cannot change if the worker
later mutates what it returned.

Why not ``pydantic_core.to_jsonable_python``: its defaults differ from the rules above (URL-safe
base64, ISO 8601 durations, ``Z`` for UTC, unsorted sets, NaN passed through, any key
``str()``-ed, no error for colliding keys) and its errors carry no path. Alone it is faster
(about 5 us against 8 us for an 830-byte dict of plain JSON values, CPython 3.11), but the walk
it would still need to reject NaN brings it to about 10 us, and it would still be wrong on the
rest; this module walks once, with the common scalars handled inline.

:func:`encode_json` produces the compact UTF-8 bytes that are sent, and so the task result size.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any, Final

import pydantic

from conductor_worker.errors import OutputSerializationError

__all__ = [
    "MAX_DEPTH",
    "RESULT_KEY",
    "OutputSerializationError",
    "encode_json",
    "to_json_value",
    "to_output_data",
]

RESULT_KEY: Final = "result"
"""The ``outputData`` key a return value that is not an object is stored under."""

MAX_DEPTH: Final = 500
"""The deepest nesting of containers accepted in an output."""

_MAX_PATH_CHARS: Final = 200
_MAX_REPR_CHARS: Final = 80

_isfinite = math.isfinite


_JSON_SCALARS: Final = frozenset({str, int, bool, type(None)})


class _Failure(Exception):
    """Internal: a conversion failure on its way up, collecting the path as it goes."""

    def __init__(self, reason: str, *, too_deep: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_deep = too_deep
        self.segments: list[str | int] = []  # innermost first

    def to_error(self, prefix: tuple[str | int, ...] = ()) -> OutputSerializationError:
        path = _render_path([*prefix, *reversed(self.segments)])
        return OutputSerializationError(f"{path}: {self.reason}", path=path)


def to_output_data(value: object) -> dict[str, Any]:
    """Convert a worker's return value into ``outputData`` (see the module docstring).

    Raises:
        OutputSerializationError: some value cannot be represented as JSON.
    """
    if value is None:
        return {}
    if type(value) is dict or _is_object_like(value):
        converted = _convert_top(value, 0, ())
        if type(converted) is dict:
            return converted
        return {RESULT_KEY: converted}  # a root model whose dump is not an object
    # Depth 1: the value sits under RESULT_KEY in the JSON that is sent.
    return {RESULT_KEY: _convert_top(value, 1, (RESULT_KEY,))}


def to_json_value(value: object) -> Any:
    """Convert any value by the rules in the module docstring into plain JSON values.

    Raises:
        OutputSerializationError: some value cannot be represented as JSON.
    """
    return _convert_top(value, 0, ())


def _is_object_like(value: object) -> bool:
    return isinstance(value, (Mapping, pydantic.BaseModel)) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


def _convert_top(value: object, depth: int, prefix: tuple[str | int, ...]) -> Any:
    try:
        try:
            # Fast pass without cycle tracking: a cycle always ends in "too deep" ...
            return _convert(value, depth, None)
        except _Failure as failure:
            if not failure.too_deep:
                raise
        # ... so only then walk again, tracking the containers on the current path, to tell a
        # circular reference (and where) from genuinely deep nesting.
        return _convert(value, depth, set())
    except _Failure as failure:
        raise failure.to_error(prefix) from None
    except RecursionError:
        # MAX_DEPTH keeps our own recursion bounded; this is for callers already deep in the
        # stack, or a pydantic model nested beyond what its serializer allows.
        raise OutputSerializationError(
            "$: value is nested too deeply to serialize (Python recursion limit reached)"
        ) from None


_dumps = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=False
).encode


def encode_json(output: object) -> bytes:
    """Encode converted output as compact UTF-8 JSON: the bytes sent, hence the result size.

    ``output`` should come from :func:`to_output_data` or :func:`to_json_value`.

    Raises:
        OutputSerializationError: a string holds a lone surrogate (not encodable as UTF-8), or
            ``output`` was not converted first and holds a value JSON cannot represent.
    """
    try:
        text = _dumps(output)
    except (TypeError, ValueError) as exc:
        raise OutputSerializationError(f"$: cannot encode as JSON: {exc}") from None
    except RecursionError:
        raise OutputSerializationError("$: value is nested too deeply to encode") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        path = _find_unencodable(output, []) or "$"
        char = exc.object[exc.start]
        raise OutputSerializationError(
            f"{path}: string contains the lone surrogate U+{ord(char):04X}, "
            "which cannot be encoded as UTF-8",
            path=path,
        ) from None


def _convert(value: Any, depth: int, active: set[int] | None) -> Any:
    """Convert one value.

    Containers are walked inline, not in helpers, so each nesting level costs one stack frame.
    ``active`` holds the ids of the containers being converted when cycles are tracked.
    """
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    if kind is float:
        if _isfinite(value):
            return value
        raise _Failure(f"float {_float_name(value)} is not valid JSON")

    original = value
    sort_after = False
    if kind is dict:
        is_mapping = True
    elif kind is list or kind is tuple:
        is_mapping = False
    elif isinstance(value, enum.Enum):  # before str/int: StrEnum and IntEnum are both
        return _convert(value.value, depth, active)
    elif isinstance(value, str):
        return str.__str__(value)  # a plain str, whatever the subclass does
    elif isinstance(value, int):
        return int.__int__(value)
    elif isinstance(value, float):
        return _convert(float.__float__(value), depth, active)
    elif isinstance(value, Mapping):
        is_mapping = True
    elif isinstance(value, (list, tuple)):
        is_mapping = False
    elif isinstance(value, (set, frozenset)):
        is_mapping = False
        sort_after = True
    elif isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    elif isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    elif isinstance(value, datetime.timedelta):
        return value.total_seconds()
    elif isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    elif isinstance(value, pydantic.BaseModel):
        value = _dump_model(value)
        if type(value) is not dict:
            return _convert(value, depth, active)  # a root model
        is_mapping = True
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
        is_mapping = True
    else:
        raise _Failure(f"cannot serialize object of type {_type_name(value)}")

    if depth >= MAX_DEPTH:
        raise _Failure(f"nesting deeper than {MAX_DEPTH} levels", too_deep=True)
    identity = 0
    if active is not None:
        identity = id(original)
        if identity in active:
            raise _Failure(f"circular reference: this {_type_name(original)} contains itself")
        active.add(identity)
    depth += 1

    if is_mapping:
        out: dict[str, Any] = {}
        keys_changed = False
        for key, item in value.items():
            if type(key) is not str:
                key = _convert_key(key)
                keys_changed = True
            item_kind = type(item)
            # Plain JSON scalars inline: they are most of any output, and a call per item costs.
            if item_kind in _JSON_SCALARS or (item_kind is float and _isfinite(item)):
                out[key] = item
            else:
                try:
                    out[key] = _convert(item, depth, active)
                except _Failure as failure:
                    failure.segments.append(key)
                    raise
        if keys_changed and len(out) != len(value):
            raise _Failure(_describe_key_collision(value))
        if active is not None:
            active.discard(identity)
        return out

    items: list[Any] = []
    append = items.append
    for item in value:
        item_kind = type(item)
        if item_kind in _JSON_SCALARS or (item_kind is float and _isfinite(item)):
            append(item)
        else:
            try:
                append(_convert(item, depth, active))
            except _Failure as failure:
                failure.segments.append(len(items))  # the index of the failing item
                raise
    if active is not None:
        active.discard(identity)
    if sort_after:
        with contextlib.suppress(TypeError):  # not orderable: keep iteration order
            items = sorted(items)
    return items


def _convert_key(key: object) -> str:
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        if not _isfinite(key):
            raise _Failure(f"float {_float_name(key)} is not valid JSON (as an object key)")
        return float.__repr__(key)
    if isinstance(key, uuid.UUID):
        return str(key)
    raise _Failure(
        f"cannot use a key of type {_type_name(key)} in a JSON object ({_short_repr(key)}); "
        "only str, int, float, bool, Enum and UUID keys are converted"
    )


def _describe_key_collision(mapping: Mapping[Any, Any]) -> str:
    seen: dict[str, object] = {}
    for key in mapping:
        text = _convert_key(key)
        if text in seen:
            return (
                f"keys {_short_repr(seen[text])} and {_short_repr(key)} both become the "
                f"object key {_short_repr(text)}"
            )
        seen[text] = key
    return "two keys become the same object key"  # unreachable unless the mapping changed


def _dump_model(model: pydantic.BaseModel) -> Any:
    try:
        return model.model_dump(mode="json", by_alias=True)
    except Exception as exc:  # pydantic raises several types, including ValueError for cycles
        detail = str(exc).split("\n", 1)[0]
        raise _Failure(f"cannot serialize pydantic model {_type_name(model)}: {detail}") from None


def _find_unencodable(value: object, path: list[str | int]) -> str | None:
    """The path of the first string (or key) UTF-8 cannot encode; searched only on failure."""
    if isinstance(value, str):
        return None if _encodable(value) else _render_path(path)
    if isinstance(value, dict):
        pairs: Any = value.items()
    elif isinstance(value, (list, tuple)):
        pairs = enumerate(value)
    else:
        return None
    for key, item in pairs:
        path.append(key)
        if isinstance(key, str) and not _encodable(key):
            return _render_path(path)
        found = _find_unencodable(item, path)
        if found is not None:
            return found
        path.pop()
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _render_path(segments: list[str | int]) -> str:
    path = "$" + "".join(_segment(s) for s in segments)
    if len(path) > _MAX_PATH_CHARS:
        keep = _MAX_PATH_CHARS // 2
        path = f"{path[:keep]}...{path[-keep:]}"
    return path


def _segment(key: object) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    text = str(key)
    if text.isidentifier():
        return f".{text}"
    return f"[{_short_repr(text)}]"


def _float_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _type_name(value: object) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _short_repr(value: object) -> str:
    text = repr(value)
    if len(text) > _MAX_REPR_CHARS:
        text = text[: _MAX_REPR_CHARS - 3] + "..."
    return text
