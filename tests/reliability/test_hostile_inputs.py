"""Hostile data at the three places it enters the worker, as property tests (no sockets).

* Task inputs (deep nesting, huge strings, NaN/inf, odd unicode) against workers of many
  signatures: binding succeeds or raises InputBindingError, nothing else.
* Worker outputs (the same plus bytes, cycles, unknown types, lone surrogates):
  ``execute_sync`` always returns an Outcome; an unencodable value is
  FAILED_WITH_TERMINAL_ERROR with a reason naming the JSON path; the encoded TaskResult is
  always strict UTF-8 JSON.
* Server answers (wrong types, unknown fields and enum values, a 5 MB inputData, deep nesting):
  ``parse_tasks`` keeps the good tasks, reports the bad ones as MalformedTask, never raises.
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conductor_client.models import Task
from conductor_worker import InputBindingError
from conductor_worker.context import TaskContext
from conductor_worker.execution import (
    COMPLETED,
    TERMINAL,
    Outcome,
    WorkerFunction,
    execute_sync,
)
from conductor_worker.transport import MalformedTask, ServerError, Transport, parse_tasks

pytestmark = pytest.mark.timeout(120)

EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HUGE = 2_000_000  # characters in a "huge" string
DEEP = 50_000  # levels in a "deep" structure: far past Python's recursion limit

# -- building blocks ---------------------------------------------------------------------------


def nested_list(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested_dict(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


weird_text = st.one_of(
    st.text(),
    st.text(st.characters(codec="utf-8")),  # anything encodable, incl. controls, RTL, emoji
    st.sampled_from(
        [
            "",
            "\x00",
            "\u202e",
            "\ufeff",
            "e\u0301",
            "\U0001d54f" * 100,
            "\U0010ffff",
            "'; DROP TABLE tasks; --",
            "{{ template }}",
            "${workflow.input.x}",
        ]
    ),
)
odd_floats = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    odd_floats,
    weird_text,
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(weird_text, children, max_size=5)
    ),
    max_leaves=30,
)
# Values built once (big), picked by name: hypothesis would choke printing them.
MONSTERS: dict[str, Any] = {
    "deep list": nested_list(DEEP),
    "deep dict": nested_dict(DEEP),
    "huge ascii": "x" * HUGE,
    "huge euro": "\u20ac" * (HUGE // 4),
    "many NaN": [math.nan] * 1000,
    "surrogate key": {"\ud800": 1},  # what a lenient JSON parser gives for "\ud800"
    "surrogate value": "lone \udfff surrogate",
}


def monster(name: str) -> Any:
    return MONSTERS[name]


monsters = st.sampled_from(sorted(MONSTERS)).map(monster)
hostile_inputs = st.dictionaries(
    st.sampled_from(["a", "b", "items", "when", "x", "extra", "\u00e9"]),
    st.one_of(json_values, monsters),
    max_size=6,
)


# -- worker signatures -------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Point:
    x: float
    y: float


class Order(pydantic.BaseModel):
    id: str
    qty: int = 1
    tags: list[str] = []


def w_plain(a, b=None, **extra):
    return {}


def w_scalars(a: int, b: str = "", x: float = 0.0) -> dict[str, Any]:
    return {}


def w_containers(items: list[int], extra: dict[str, float] | None = None) -> dict[str, Any]:
    return {}


def w_rich(
    when: datetime.datetime | None = None,
    a: uuid.UUID | None = None,
    b: Decimal = Decimal(0),
    x: Color = Color.RED,
) -> dict[str, Any]:
    return {}


def w_models(a: Point, b: Order | None = None, x: Literal["p", "q"] = "p") -> dict[str, Any]:
    return {}


def w_kwargs(*, a: bool = False, **rest: int) -> dict[str, Any]:
    return {}


def w_task(task: Task) -> dict[str, Any]:
    return {}


WORKERS = [
    WorkerFunction(fn)
    for fn in (w_plain, w_scalars, w_containers, w_rich, w_models, w_kwargs, w_task)
]


def task_with(input_data: Any) -> Task:
    # model_construct: a task as the runner holds it after parsing, without re-validating.
    return Task.model_construct(
        task_id="task-1", workflow_instance_id="wf-1", task_def_name="t", input_data=input_data
    )


# -- inputs ------------------------------------------------------------------------------------


@EXAMPLES
@given(inputs=hostile_inputs, worker=st.sampled_from(WORKERS))
def test_binding_succeeds_or_raises_input_binding_error(
    inputs: dict[str, Any], worker: WorkerFunction
) -> None:
    failure: InputBindingError | None = None
    try:
        args, kwargs = worker.binder.bind(task_with(inputs))
    except InputBindingError as error:
        failure = error
    if failure is not None:
        assert str(failure)
        assert len(str(failure)) < 10_000, "the reason must stay short, whatever the input"
    else:
        assert isinstance(args, list)
        assert isinstance(kwargs, dict)


@pytest.mark.parametrize("input_data", ["text", 5, ["a"], nested_list(DEEP)])
def test_input_that_is_not_an_object_is_a_binding_error(input_data: Any) -> None:
    with pytest.raises(InputBindingError, match="JSON object"):
        WORKERS[1].binder.bind(task_with(input_data))


@EXAMPLES
@given(inputs=hostile_inputs, worker=st.sampled_from(WORKERS))
def test_execution_of_hostile_input_always_ends_in_an_outcome(
    inputs: dict[str, Any], worker: WorkerFunction
) -> None:
    outcome = execute_sync(worker, TaskContext(task_with(inputs), "me"))
    assert isinstance(outcome, Outcome)
    assert outcome.status in (COMPLETED, TERMINAL)
    if outcome.status == TERMINAL:
        assert outcome.error_kind == "bad_input"
    assert_strict_json(outcome.encode("me"))


# -- outputs -----------------------------------------------------------------------------------


class Unknown:
    """A type the serializer does not know."""


def cycle_list() -> Any:
    value: list[Any] = [1]
    value.append(value)
    return {"loop": value}


def cycle_dict() -> Any:
    value: dict[str, Any] = {"a": {}}
    value["a"]["back"] = value
    return value


BAD_OUTPUTS: list[tuple[str, Any, str]] = [
    # (label, returned value, what the reason must mention)
    ("nan", {"v": math.nan}, "NaN"),
    ("inf", {"v": [1, math.inf]}, "nfinity"),
    ("-inf in a set", {"v": {-math.inf}}, "nfinity"),
    ("lone surrogate value", {"v": "a\ud800b"}, "surrogate"),
    ("lone surrogate key", {"\udc00": 1}, "surrogate"),
    ("cycle in a list", cycle_list(), "circular"),
    ("cycle in a dict", cycle_dict(), "circular"),
    ("unknown type", {"v": Unknown()}, "Unknown"),
    ("a function", {"v": print}, "$.v"),
    ("deep list", nested_list(DEEP), "deep"),
    ("deep dict", nested_dict(DEEP), "deep"),
    ("nan in a model", Point(x=math.nan, y=0), "NaN"),
]


@pytest.mark.parametrize(("value", "mentions"), [(v, m) for _, v, m in BAD_OUTPUTS],
                         ids=[label for label, _, _ in BAD_OUTPUTS])  # fmt: skip
def test_unserializable_output_fails_the_task_terminally_with_a_clear_reason(
    value: Any, mentions: str
) -> None:
    outcome = execute_sync(WorkerFunction(lambda: value), TaskContext(task_with({}), "me"))
    assert outcome.status == TERMINAL
    assert outcome.error_kind == "bad_output"
    assert outcome.reason is not None
    assert outcome.reason.startswith("$"), outcome.reason[:200]
    assert mentions.lower() in outcome.reason.lower(), outcome.reason[:300]
    body = assert_strict_json(outcome.encode("me"))
    assert len(body["reasonForIncompletion"]) <= 500


GOOD_ODD_OUTPUTS: list[Any] = [
    b"\x00\xff binary",
    {"bytes": bytearray(b"\xfe")},
    "x" * HUGE,
    {"emoji": "\U0001d54f\U0010ffff\u202e", "zero": -0.0, "big": 2**200},
    {1: "int key", 2.5: "float key"},
    nested_list(50),
]


@pytest.mark.parametrize("value", GOOD_ODD_OUTPUTS, ids=lambda v: type(v).__name__)
def test_odd_but_valid_output_completes(value: Any) -> None:
    outcome = execute_sync(WorkerFunction(lambda: value), TaskContext(task_with({}), "me"))
    assert outcome.status == COMPLETED, outcome.reason
    assert_strict_json(outcome.encode("me"))


hostile_outputs = st.recursive(
    st.one_of(
        json_leaves,
        st.binary(max_size=64),
        st.sampled_from(["\ud800", "ok\udfffok", Unknown(), Color.BLUE, Decimal("NaN")]),
        st.builds(cycle_list),
        monsters,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(weird_text, children, max_size=4),
        st.sets(st.integers(), max_size=4),
        st.tuples(children, children),
    ),
    max_leaves=20,
)


@EXAMPLES
@given(value=hostile_outputs)
def test_any_output_ends_in_an_outcome_with_a_valid_body(value: Any) -> None:
    outcome = execute_sync(WorkerFunction(lambda: value), TaskContext(task_with({}), "me"))
    assert isinstance(outcome, Outcome)
    assert outcome.status in (COMPLETED, TERMINAL)
    if outcome.status == TERMINAL:
        assert outcome.error_kind == "bad_output"
        assert outcome.reason
        assert outcome.reason.startswith("$")
    body = assert_strict_json(outcome.encode("worker-\u00e9"))
    assert body["taskId"] == "task-1"


def assert_strict_json(body: bytes) -> Any:
    """Valid UTF-8, valid JSON without NaN/Infinity: what the server's Jackson accepts."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in the encoded result")

    return json.loads(body.decode("utf-8", errors="strict"), parse_constant=refuse)


# -- server answers ----------------------------------------------------------------------------

GOOD_TASK = {
    "taskId": "good-1",
    "workflowInstanceId": "wf-1",
    "taskType": "t",
    "taskDefName": "t",
    "status": "IN_PROGRESS",
    "inputData": {"a": 1},
    "pollCount": 1,
}
BAD_FIELDS: dict[str, list[Any]] = {
    "taskId": [5, None, ["x"], {"a": 1}],
    "workflowInstanceId": [1.5, [], {}],
    "inputData": ["text", 7, [1, 2]],
    "pollCount": ["many", [], 1.5],
    "responseTimeoutSeconds": ["soon", {}],
    "retryCount": [{"n": 1}],
}
server_task = st.one_of(
    # a good task, possibly with unknown fields and values from a newer server
    st.fixed_dictionaries(
        {},
        optional={
            "somethingNew": json_values,
            "status": st.sampled_from(["IN_PROGRESS", "SCHEDULED", "QUANTUM_STATE", ""]),
            "workflowPriority": st.integers(0, 99),
            "inputData": st.dictionaries(weird_text, json_values, max_size=5),
        },
    ).map(lambda extra: {**GOOD_TASK, **extra}),
    # a task with one field of the wrong type
    st.sampled_from([{**GOOD_TASK, k: v} for k, values in BAD_FIELDS.items() for v in values]),
    # not a task at all
    json_leaves,
    st.lists(json_leaves, max_size=3),
)


@EXAMPLES
@given(items=st.lists(server_task, max_size=6))
def test_parse_tasks_keeps_the_good_and_reports_the_bad(items: list[Any]) -> None:
    tasks, malformed = parse_tasks(items)
    assert len(tasks) + len(malformed) == len(items)
    assert all(isinstance(t, Task) for t in tasks)
    for bad in malformed:
        assert isinstance(bad, MalformedTask)
        assert bad.error
        # ids are only ever given as strings, so reporting the task back is safe
        assert bad.task_id is None or isinstance(bad.task_id, str)
        assert bad.workflow_instance_id is None or isinstance(bad.workflow_instance_id, str)


def test_parse_tasks_wrong_types_become_malformed_with_ids_when_readable() -> None:
    items = [
        GOOD_TASK,
        {**GOOD_TASK, "taskId": "bad-1", "pollCount": "many"},
        {**GOOD_TASK, "taskId": 5},
        "not a task",
        None,
        {**GOOD_TASK, "taskId": "new-1", "status": "SOME_FUTURE_STATUS", "brandNew": {"x": 1}},
    ]
    tasks, malformed = parse_tasks(items)
    assert [t.task_id for t in tasks] == ["good-1", "new-1"]
    assert tasks[1].status is not None  # an unknown status is kept, not a failure
    assert [(m.task_id, m.workflow_instance_id) for m in malformed] == [
        ("bad-1", "wf-1"),
        (None, "wf-1"),
        (None, None),
        (None, None),
    ]
    assert "pollCount" in malformed[0].error


def test_parse_tasks_with_a_5mb_input_and_a_deep_input() -> None:
    big = {**GOOD_TASK, "taskId": "big", "inputData": {"blob": "z" * (5 * 1024 * 1024)}}
    deep = {**GOOD_TASK, "taskId": "deep", "inputData": {"d": nested_dict(DEEP)}}
    wire = json.dumps([big, GOOD_TASK]).encode()
    assert len(wire) > 5 * 1024 * 1024
    tasks, malformed = parse_tasks(json.loads(wire))
    assert [t.task_id for t in tasks] == ["big", "good-1"]
    assert malformed == []
    assert len((tasks[0].input_data or {})["blob"]) == 5 * 1024 * 1024
    tasks, malformed = parse_tasks([deep])
    assert len(tasks) + len(malformed) == 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"[" * DEEP + b"]" * DEEP, id="deep-array"),
        pytest.param(b'{"a":' * DEEP + b"1" + b"}" * DEEP, id="deep-object"),
        pytest.param(b"<html>502 Bad Gateway</html>", id="html"),
        pytest.param(b"\xff\xfe not utf-8", id="bad-utf8"),
        pytest.param(b'[{"taskId": "t"', id="truncated"),
    ],
)
def test_an_unreadable_answer_is_a_server_error(data: bytes) -> None:
    with pytest.raises(ServerError) as caught:
        Transport._parse_json(data, "/tasks/poll/batch/t")
    assert caught.value.kind == "malformed_response"
