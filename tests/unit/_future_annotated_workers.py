"""Worker functions in a module using ``from __future__ import annotations``.

Every annotation here is a string at runtime, so binding them exercises the resolution of hints
with ``typing.get_type_hints`` rather than reading live objects off the signature.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

if TYPE_CHECKING:
    # Only type checkers see this name, so annotations using it cannot be resolved at runtime.
    from decimal import Decimal as OnlyForTypeCheckers


class FakeTask(pydantic.BaseModel):
    """Stand-in for the generated Task model."""

    task_id: str = "task-1"
    input_data: dict[str, Any] | None = None


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Address(TypedDict):
    street: str
    zip_code: int


class Order(pydantic.BaseModel):
    order_id: str = pydantic.Field(alias="orderId")
    quantity: int
    color: Color


class Tree(pydantic.BaseModel):
    """Refers to itself: only resolvable once the module has been fully executed."""

    value: int
    children: list[Tree] = []


def place_order(
    order: Order,
    origin: Point,
    color: Color,
    address: Address,
    ship_on: datetime.date,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "order": order,
        "origin": origin,
        "color": color,
        "address": address,
        "ship_on": ship_on,
        "tags": tags,
    }


def measure(mode: Literal["fast", "slow"], ratio: Annotated[float, pydantic.Field(gt=0)]) -> str:
    return f"{mode}:{ratio}"


def sum_tree(tree: Tree) -> int:
    return tree.value + sum(sum_tree(child) for child in tree.children)


def receive_task(task: FakeTask) -> str:
    return task.task_id


def uses_type_checking_only_name(amount: OnlyForTypeCheckers) -> None:
    """Its parameter annotation cannot be resolved at runtime."""


def bad_return_annotation(count: int) -> OnlyForTypeCheckers:
    """Only its return annotation is unresolvable; binding never needs it."""
    raise NotImplementedError


def make_worker_with_local_type() -> Any:
    """A worker whose parameter type is local to a function: invisible to get_type_hints."""

    @dataclasses.dataclass
    class Local:
        a: int

    def worker(value: Local) -> Local:
        return value

    return worker
