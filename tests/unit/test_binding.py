"""Unit tests for conductor_worker.binding: signature analysis and per-task input binding.

No ``from __future__ import annotations`` here on purpose: several tests define types locally,
which only live annotations can refer to. ``_future_annotated_workers`` covers string annotations.
"""

import asyncio
import dataclasses
import datetime
import decimal
import enum
import functools
import importlib
import inspect
import typing
import uuid
from typing import Annotated, Any, Literal, Optional, Union

import pydantic
import pytest
from typing_extensions import TypedDict

from conductor_worker import binding
from conductor_worker.binding import InputBinder, InputBindingError
from conductor_worker.errors import (
    ConductorWorkerError,
    ConfigurationError,
    WorkerSignatureError,
)

# The helper sits next to this file; import it whether or not tests/ becomes a package.
future_workers: Any = importlib.import_module(
    f"{__package__}._future_annotated_workers" if __package__ else "_future_annotated_workers"
)


class Task:
    """A minimal stand-in for the generated Task model: only ``input_data`` matters."""

    def __init__(self, input_data: dict[str, Any] | None = None, task_id: str = "t-1") -> None:
        self.input_data = input_data
        self.task_id = task_id


class SpecialTask(Task):
    pass


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Dimensions:
    width: int
    height: int


class Customer(pydantic.BaseModel):
    customer_id: int = pydantic.Field(alias="customerId")
    email: str


class Shipping(TypedDict):
    carrier: str
    days: int


def binder_for(fn: Any, task_type: type = Task) -> InputBinder:
    return InputBinder.for_function(fn, task_type)


def bind(fn: Any, inputs: dict[str, Any] | None) -> tuple[list[Any], dict[str, Any]]:
    return binder_for(fn).bind(Task(inputs))


def call(fn: Any, inputs: dict[str, Any] | None) -> Any:
    args, kwargs = bind(fn, inputs)
    return fn(*args, **kwargs)


# --- receiving the task itself --------------------------------------------------------------


def test_sole_task_annotated_parameter_receives_the_task() -> None:
    def worker(task: Task) -> str:
        return task.task_id

    binder = binder_for(worker)
    task = Task({"task": "not this"}, task_id="abc")

    assert binder.takes_task is True
    assert binder.bind(task) == ([task], {})
    assert binder.bind(task)[0][0] is task


def test_subclass_annotation_and_annotated_wrapper_also_receive_the_task() -> None:
    def sub(task: SpecialTask) -> None: ...

    def wrapped(task: Annotated[Task, "the task"]) -> None: ...

    assert binder_for(sub).takes_task is True
    assert binder_for(wrapped).takes_task is True


def test_keyword_only_task_parameter_is_passed_by_keyword() -> None:
    def worker(*, the_task: Task) -> Task:
        return the_task

    task = Task({})
    args, kwargs = binder_for(worker).bind(task)

    assert (args, kwargs) == ([], {"the_task": task})
    assert worker(*args, **kwargs) is task


def test_a_parent_class_of_the_task_type_does_not_receive_the_task() -> None:
    def worker(task: object) -> None: ...

    binder = binder_for(worker)

    assert binder.takes_task is False
    assert binder.bind(Task({"task": 7})) == ([], {"task": 7})


def test_unannotated_single_parameter_named_task_is_bound_by_name() -> None:
    def worker(task):  # type: ignore[no-untyped-def,unused-ignore]
        return task

    binder = binder_for(worker)

    assert binder.takes_task is False
    assert binder.bind(Task({"task": {"x": 1}})) == ([], {"task": {"x": 1}})


def test_task_annotation_next_to_other_parameters_is_rejected_at_registration() -> None:
    def worker(task: Task, retries: int = 3) -> None: ...

    with pytest.raises(TypeError, match=r"parameter 'task' .* annotated with the task class Task"):
        binder_for(worker)


def test_task_type_from_a_pydantic_model() -> None:
    binder = binder_for(future_workers.receive_task, future_workers.FakeTask)
    task = future_workers.FakeTask(task_id="t-9", input_data=None)

    assert binder.takes_task is True
    args, kwargs = binder.bind(task)
    assert future_workers.receive_task(*args, **kwargs) == "t-9"


# --- binding by name and conversion ---------------------------------------------------------


def test_inputs_bound_by_name_and_converted_in_lax_mode() -> None:
    def worker(count: int, ratio: float, name: str, enabled: bool) -> None: ...

    args, kwargs = bind(worker, {"enabled": "true", "ratio": "2.5", "count": "5", "name": "n"})

    assert args == []
    assert kwargs == {"count": 5, "ratio": 2.5, "name": "n", "enabled": True}
    assert type(kwargs["count"]) is int
    assert type(kwargs["ratio"]) is float


def test_containers_are_converted() -> None:
    def worker(
        ids: list[int], weights: dict[str, float], pair: tuple[int, str], unique: set[int]
    ) -> None: ...

    _, kwargs = bind(
        worker,
        {"ids": ["1", 2], "weights": {"a": "0.5"}, "pair": [1, "x"], "unique": [3, 3, "4"]},
    )

    assert kwargs == {"ids": [1, 2], "weights": {"a": 0.5}, "pair": (1, "x"), "unique": {3, 4}}


def test_optional_and_union_annotations() -> None:
    def worker(
        maybe: Optional[int],  # noqa: UP045 - the spelling under test
        either: Union[int, str],  # noqa: UP007 - the spelling under test
        modern: int | None,
    ) -> None: ...

    _, kwargs = bind(worker, {"maybe": None, "either": "text", "modern": "7"})

    assert kwargs == {"maybe": None, "either": "text", "modern": 7}


def test_standard_library_value_types() -> None:
    def worker(
        size: Size,
        priority: Priority,
        at: datetime.datetime,
        day: datetime.date,
        ident: uuid.UUID,
        amount: decimal.Decimal,
    ) -> None: ...

    _, kwargs = bind(
        worker,
        {
            "size": "l",
            "priority": 2,
            "at": "2024-05-06T07:08:09+02:00",
            "day": "2024-05-06",
            "ident": "12345678-1234-5678-1234-567812345678",
            "amount": "10.10",
        },
    )

    assert kwargs["size"] is Size.LARGE
    assert kwargs["priority"] is Priority.HIGH
    assert kwargs["at"] == datetime.datetime(
        2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    assert kwargs["day"] == datetime.date(2024, 5, 6)
    assert kwargs["ident"] == uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert kwargs["amount"] == decimal.Decimal("10.10")
    assert str(kwargs["amount"]) == "10.10"  # precision kept, not a float round trip


def test_structured_types() -> None:
    def worker(
        dims: Dimensions,
        customer: Customer,
        shipping: Shipping,
        mode: Literal["air", "sea"],
        weight: Annotated[int, pydantic.Field(ge=0)],
    ) -> None: ...

    _, kwargs = bind(
        worker,
        {
            "dims": {"width": "3", "height": 4},
            "customer": {"customerId": "17", "email": "a@b.c"},
            "shipping": {"carrier": "ups", "days": "2"},
            "mode": "sea",
            "weight": "12",
        },
    )

    assert kwargs["dims"] == Dimensions(width=3, height=4)
    assert isinstance(kwargs["customer"], Customer)
    assert kwargs["customer"].customer_id == 17
    assert kwargs["shipping"] == {"carrier": "ups", "days": 2}
    assert kwargs["mode"] == "sea"
    assert kwargs["weight"] == 12


def test_unannotated_and_any_parameters_receive_the_raw_value() -> None:
    payload = {"nested": ["1", 2]}

    def worker(raw, anything: Any) -> None: ...  # type: ignore[no-untyped-def,unused-ignore]

    _, kwargs = bind(worker, {"raw": payload, "anything": payload})

    assert kwargs["raw"] is payload
    assert kwargs["anything"] is payload


def test_unknown_inputs_are_ignored_without_kwargs() -> None:
    def worker(a: int) -> int:
        return a

    binder = binder_for(worker)

    assert binder.accepts_extra_inputs is False
    assert binder.bind(Task({"a": 1, "b": 2})) == ([], {"a": 1})


def test_end_to_end_call_with_the_bound_arguments() -> None:
    def worker(count: int, label: str = "x", *, scale: float = 1.0) -> str:
        return f"{label}:{count * scale}"

    assert call(worker, {"count": "4", "scale": "0.5"}) == "x:2.0"


# --- defaults and missing inputs --------------------------------------------------------------


def test_missing_input_uses_the_default() -> None:
    sentinel = object()

    def worker(a: int, b: int = 10, c: Any = sentinel) -> tuple[int, int, Any]:
        return a, b, c

    assert bind(worker, {"a": 1}) == ([], {"a": 1})  # Python applies the defaults
    assert call(worker, {"a": 1}) == (1, 10, sentinel)


def test_missing_required_input_is_an_input_binding_error() -> None:
    def worker(name: str, count: int) -> None: ...

    with pytest.raises(InputBindingError, match=r"^missing required input 'count'$") as info:
        bind(worker, {"name": "n"})

    assert info.value.parameter == "count"
    assert isinstance(info.value, ConductorWorkerError)


def test_none_input_data_counts_as_empty() -> None:
    def with_defaults(a: int = 1) -> None: ...

    def required(a: int) -> None: ...

    assert bind(with_defaults, None) == ([], {})
    with pytest.raises(InputBindingError, match="missing required input 'a'"):
        bind(required, None)


def test_input_data_that_is_not_an_object_is_rejected() -> None:
    def worker(a: int) -> None: ...

    with pytest.raises(InputBindingError, match="task input must be a JSON object, got list"):
        binder_for(worker).bind(Task([1, 2]))  # type: ignore[arg-type]


def test_none_value_for_a_non_optional_parameter_is_a_conversion_error() -> None:
    def worker(count: int) -> None: ...

    with pytest.raises(InputBindingError, match=r"invalid input 'count' \(expected int\)") as info:
        bind(worker, {"count": None})

    assert "got None" in str(info.value)
    assert info.value.parameter == "count"


# --- conversion errors ------------------------------------------------------------------------


def test_conversion_error_names_parameter_type_and_problem() -> None:
    def worker(count: int) -> None: ...

    with pytest.raises(InputBindingError) as info:
        bind(worker, {"count": "abc"})

    message = str(info.value)
    assert message.startswith("invalid input 'count' (expected int): ")
    assert "valid integer" in message
    assert "(got 'abc')" in message
    assert info.value.__cause__ is None  # the summary replaces pydantic's full report


def test_conversion_error_shows_nested_location() -> None:
    def worker(lines: list[Dimensions], weights: dict[str, int]) -> None: ...

    with pytest.raises(InputBindingError, match=r"lines\[1\]\.height: "):
        bind(worker, {"lines": [{"width": 1, "height": 1}, {"width": 1, "height": "h"}]})
    with pytest.raises(InputBindingError, match=r"weights\['a b'\]: "):
        bind(worker, {"lines": [], "weights": {"a b": "x"}})


def test_conversion_error_lists_only_the_first_errors() -> None:
    def worker(ids: list[int]) -> None: ...

    with pytest.raises(InputBindingError) as info:
        bind(worker, {"ids": ["a", "b", 1, "c", "d", "e"]})

    message = str(info.value)
    assert "ids[0]" in message
    assert "ids[1]" in message
    assert "ids[3]" in message
    assert "ids[4]" not in message
    assert message.endswith("; and 2 more errors")


def test_conversion_error_truncates_huge_inputs() -> None:
    def worker(ids: list[int], size: int) -> None: ...

    huge_list = ["not a number"] * 100_000
    with pytest.raises(InputBindingError) as info:
        bind(worker, {"ids": "x" * 1_000_000, "size": 1})
    assert len(str(info.value)) < 400
    assert "..." in str(info.value)

    def takes_size(size: int) -> None: ...

    with pytest.raises(InputBindingError) as info:
        bind(takes_size, {"size": huge_list})
    assert len(str(info.value)) < 400


def test_validator_failure_in_a_model_is_an_input_binding_error() -> None:
    class Positive(pydantic.BaseModel):
        value: int

        @pydantic.field_validator("value")
        @classmethod
        def _positive(cls, value: int) -> int:
            if value <= 0:
                raise ValueError("must be positive")
            return value

    def worker(p: Positive) -> None: ...

    with pytest.raises(InputBindingError, match=r"p\.value: Value error, must be positive"):
        bind(worker, {"p": {"value": -1}})


# --- parameter kinds --------------------------------------------------------------------------


def test_var_positional_is_rejected_at_registration() -> None:
    def worker(a: int, *rest: int) -> None: ...

    with pytest.raises(TypeError, match=r"worker function .*worker takes \*rest"):
        binder_for(worker)


def bad_varargs(a: int, *rest: int) -> None: ...


def bad_task_next_to_others(task: Task, n: int) -> None: ...


@pytest.mark.parametrize(
    ("fn", "fragments"),
    [
        (bad_varargs, ["bad_varargs", "*rest"]),
        (future_workers.uses_type_checking_only_name, ["uses_type_checking_only_name", "'amount'"]),
        (bad_task_next_to_others, ["bad_task_next_to_others", "'task'"]),
    ],
    ids=["varargs", "unresolvable", "task-and-others"],
)
def test_signature_errors_are_configuration_errors_naming_function_and_parameter(
    fn: Any, fragments: list[str]
) -> None:
    with pytest.raises(WorkerSignatureError) as info:
        binder_for(fn, future_workers.FakeTask if fn.__module__ != __name__ else Task)

    assert isinstance(info.value, ConfigurationError)  # what the CLI reports as exit 2
    assert isinstance(info.value, TypeError)  # what earlier versions raised
    for fragment in fragments:
        assert fragment in str(info.value)


def test_var_keyword_receives_the_remaining_inputs() -> None:
    def worker(a: int, **extra: Any) -> dict[str, Any]:
        return {"a": a, **extra}

    binder = binder_for(worker)
    args, kwargs = binder.bind(Task({"a": "1", "b": [1], "c": None}))

    assert binder.accepts_extra_inputs is True
    assert args == []
    assert kwargs == {"a": 1, "b": [1], "c": None}


def test_annotated_var_keyword_converts_each_value_and_names_the_key() -> None:
    def worker(**counts: int) -> None: ...

    _, kwargs = bind(worker, {"x": "1", "y": 2})
    assert kwargs == {"x": 1, "y": 2}

    with pytest.raises(InputBindingError, match=r"^invalid input 'bad' \(expected int\)") as info:
        bind(worker, {"x": 1, "bad": "nope"})
    assert info.value.parameter == "bad"


def test_keyword_only_parameters() -> None:
    def worker(a: int, *, b: int, c: str = "c") -> tuple[int, int, str]:
        return a, b, c

    assert bind(worker, {"a": "1", "b": "2"}) == ([], {"a": 1, "b": 2})
    assert call(worker, {"a": 1, "b": 2, "c": "z"}) == (1, 2, "z")
    with pytest.raises(InputBindingError, match="missing required input 'b'"):
        bind(worker, {"a": 1})


def test_positional_only_parameters_are_passed_positionally_in_order() -> None:
    def worker(a: int, b: int = 5, /, c: int = 0, **extra: Any) -> tuple[Any, ...]:
        return a, b, c, extra

    # b is missing but passed explicitly (its default); inputs named like a positional-only
    # parameter do not leak into **extra.
    assert bind(worker, {"a": "1", "c": 3}) == ([1, 5], {"c": 3})
    assert bind(worker, {"b": 2, "a": 1, "d": 4}) == ([1, 2], {"d": 4})
    assert call(worker, {"a": 1, "d": 4}) == (1, 5, 0, {"d": 4})
    with pytest.raises(InputBindingError, match="missing required input 'a'"):
        bind(worker, {"b": 1})


def test_function_without_parameters() -> None:
    def worker() -> str:
        return "ok"

    binder = binder_for(worker)
    assert binder.takes_task is False
    assert binder.parameter_names == ()
    assert binder.bind(Task({"anything": 1})) == ([], {})


# --- kinds of callables -----------------------------------------------------------------------


def test_async_function() -> None:
    async def worker(n: int) -> int:
        return n * 2

    args, kwargs = bind(worker, {"n": "21"})
    assert asyncio.run(worker(*args, **kwargs)) == 42


def test_bound_method_skips_self() -> None:
    class Service:
        def handle(self, n: int) -> int:
            return n + 1

    binder = binder_for(Service().handle)
    assert binder.parameter_names == ("n",)
    assert binder.bind(Task({"n": "1"})) == ([], {"n": 1})


def test_partial_binds_only_the_remaining_parameters() -> None:
    def worker(prefix: str, n: int) -> str:
        return f"{prefix}{n}"

    fn = functools.partial(worker, prefix="#")
    binder = binder_for(fn)

    args, kwargs = binder.bind(Task({"n": "3"}))
    assert fn(*args, **kwargs) == "#3"
    assert binder.function_name.endswith("worker")


def test_callable_object_uses_its_call_annotations() -> None:
    class Worker:
        def __call__(self, n: int) -> int:
            return n

    assert binder_for(Worker()).bind(Task({"n": "8"})) == ([], {"n": 8})


# --- registration-time errors -----------------------------------------------------------------


def test_unresolvable_annotation_names_function_and_parameter() -> None:
    with pytest.raises(TypeError) as info:
        binder_for(future_workers.uses_type_checking_only_name, future_workers.FakeTask)

    message = str(info.value)
    assert "parameter 'amount'" in message
    assert "uses_type_checking_only_name" in message
    assert "OnlyForTypeCheckers" in message
    assert "TYPE_CHECKING" in message


def test_locally_defined_type_under_future_annotations_is_a_clear_error() -> None:
    worker = future_workers.make_worker_with_local_type()

    with pytest.raises(TypeError, match=r"annotation 'Local' of parameter 'value'.*module level"):
        binder_for(worker, future_workers.FakeTask)


def test_unresolvable_return_annotation_does_not_matter() -> None:
    binder = binder_for(future_workers.bad_return_annotation, future_workers.FakeTask)
    task = future_workers.FakeTask(input_data={"count": "2"})

    assert binder.bind(task) == ([], {"count": 2})


def test_annotation_pydantic_cannot_convert_to_is_rejected_at_registration() -> None:
    class Opaque:
        pass

    def worker(thing: Opaque) -> None: ...

    with pytest.raises(TypeError) as info:
        binder_for(worker)

    message = str(info.value)
    assert "Opaque of parameter 'thing' of worker function" in message
    assert "Unable to generate pydantic-core schema" in message
    assert "annotate the parameter with Any" in message
    assert "arbitrary_types_allowed" not in message


def test_model_with_undefined_forward_reference_is_rejected_at_registration() -> None:
    class Incomplete(pydantic.BaseModel):
        part: "Undefined"  # type: ignore[name-defined]  # noqa: F821

    def worker(value: Incomplete) -> None: ...

    with pytest.raises(TypeError, match=r"parameter 'value' of worker function"):
        binder_for(worker)


def test_typing_typeddict_gets_pydantics_clear_message() -> None:
    import sys

    if sys.version_info >= (3, 12):
        pytest.skip("pydantic accepts typing.TypedDict from Python 3.12")

    class Legacy(typing.TypedDict):
        a: int

    def worker(value: Legacy) -> None: ...

    with pytest.raises(TypeError, match=r"parameter 'value'.*typing_extensions\.TypedDict"):
        binder_for(worker)


# --- from __future__ import annotations --------------------------------------------------------


def test_future_annotations_module_with_rich_types() -> None:
    binder = binder_for(future_workers.place_order, future_workers.FakeTask)
    task = future_workers.FakeTask(
        input_data={
            "order": {"orderId": "o-1", "quantity": "3", "color": "red"},
            "origin": {"x": "1", "y": 2},
            "color": "green",
            "address": {"street": "Main", "zip_code": "12345"},
            "ship_on": "2024-05-06",
        }
    )

    args, kwargs = binder.bind(task)
    result = future_workers.place_order(*args, **kwargs)

    assert result["order"] == future_workers.Order(
        orderId="o-1", quantity=3, color=future_workers.Color.RED
    )
    assert result["origin"] == future_workers.Point(x=1, y=2)
    assert result["color"] is future_workers.Color.GREEN
    assert result["address"] == {"street": "Main", "zip_code": 12345}
    assert result["ship_on"] == datetime.date(2024, 5, 6)
    assert result["tags"] is None


def test_future_annotations_literal_annotated_and_self_referencing_model() -> None:
    measure = binder_for(future_workers.measure, future_workers.FakeTask)
    tree = binder_for(future_workers.sum_tree, future_workers.FakeTask)

    args, kwargs = measure.bind(future_workers.FakeTask(input_data={"mode": "fast", "ratio": "2"}))
    assert future_workers.measure(*args, **kwargs) == "fast:2.0"
    with pytest.raises(InputBindingError, match=r"invalid input 'ratio' \(expected float\)"):
        measure.bind(future_workers.FakeTask(input_data={"mode": "fast", "ratio": 0}))

    nested = {"value": 1, "children": [{"value": "2", "children": [{"value": 3}]}]}
    args, kwargs = tree.bind(future_workers.FakeTask(input_data={"tree": nested}))
    assert future_workers.sum_tree(*args, **kwargs) == 6


# --- analysed once ----------------------------------------------------------------------------


def test_binding_does_not_reanalyse_the_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    def worker(a: int, b: list[int], c: str = "c") -> None: ...

    binder = binder_for(worker)

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("signature analysed per task")

    monkeypatch.setattr(typing, "get_type_hints", forbidden)
    monkeypatch.setattr(inspect, "signature", forbidden)
    monkeypatch.setattr(pydantic, "TypeAdapter", forbidden)

    for n in range(3):
        assert binder.bind(Task({"a": str(n), "b": [n]})) == ([], {"a": n, "b": [n]})


def test_repr_and_introspection() -> None:
    def worker(a: int, /, b: str, *, c: int = 1, **rest: Any) -> None: ...

    binder = binder_for(worker)

    assert binder.parameter_names == ("a", "b", "c")
    assert binder.function_name == f"{__name__}.{worker.__qualname__}"
    assert repr(binder).endswith("worker(a, b, c, **extra)>")
    assert "takes the task" in repr(
        binder_for(future_workers.receive_task, future_workers.FakeTask)
    )


def test_module_exports() -> None:
    assert binding.__all__ == ["InputBinder", "InputBindingError"]


def test_null_input_takes_the_default_when_the_type_rejects_none() -> None:
    """A workflow wiring ${workflow.input.x} without x sends null: the default applies."""

    def fn(repeat: int = 3, label: str | None = "x") -> None: ...

    binder = InputBinder.for_function(fn, _NullTask)
    args, kwargs = binder.bind(_NullTask({"repeat": None, "label": None}))
    assert (args, kwargs) == ([], {"label": None})  # repeat omitted: Python applies 3


def test_null_input_without_a_default_is_still_an_error() -> None:
    def fn(repeat: int) -> None: ...

    binder = InputBinder.for_function(fn, _NullTask)
    with pytest.raises(InputBindingError, match="repeat"):
        binder.bind(_NullTask({"repeat": None}))


class _NullTask:
    def __init__(self, input_data: dict[str, object]) -> None:
        self.input_data = input_data
