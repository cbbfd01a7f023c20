"""Bind a task's input to a worker function's parameters.

A worker function's signature is analysed once, when the worker is registered, into an
:class:`InputBinder`; binding a task is then a loop over precomputed parameters (no
``inspect.signature`` or ``get_type_hints`` per task).

Rules, in order:

1. A function whose only parameter is annotated with the task model class (or a subclass)
   receives the task itself. A task-annotated parameter in any other position is rejected at
   registration: there is no sensible way to build a task from one input value.
2. Otherwise every named parameter is looked up BY NAME in ``task.input_data`` (``None`` counts as
   ``{}``) and converted to its annotation by a :class:`pydantic.TypeAdapter` in lax mode, so
   ``"5"`` becomes ``5`` for an ``int``, and unions, containers, enums, dates, UUIDs, decimals,
   dataclasses, pydantic models, TypedDicts, ``Literal`` and ``Annotated`` all work as pydantic
   defines them. An input that is present with the value ``None`` is converted like any other
   value, so it fails for a non-optional annotation.
3. Unannotated parameters, and parameters annotated ``Any``, receive the raw JSON value.
4. A missing input uses the parameter's default; with no default it is an
   :class:`InputBindingError` (``missing required input 'count'``).
5. ``**kwargs`` receives every input not bound to a named parameter (converted to the ``**kwargs``
   annotation, if any). ``*args`` is rejected at registration.
6. Positional-only parameters are passed positionally, in order; all others by keyword.

Annotations are resolved with ``typing.get_type_hints(include_extras=True)``, so modules using
``from __future__ import annotations`` work, provided the names they use exist at module level when
the worker is registered. Anything wrong with the signature is a :class:`WorkerSignatureError` (a
``ConfigurationError``, also a ``TypeError``) at registration naming the function and the
parameter; anything wrong with a task's input is an :class:`InputBindingError`, which fails that
task terminally.
"""

from __future__ import annotations

import functools
import inspect
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

import pydantic

from conductor_worker.errors import InputBindingError, WorkerSignatureError

__all__ = ["InputBinder", "InputBindingError"]

# How many of pydantic's errors a binding error message shows, and how long a shown input may be.
_MAX_ERRORS_SHOWN: Final = 3
_MAX_INPUT_REPR: Final = 200
_MAX_TYPE_REPR: Final = 100

_Validator = Callable[[Any], Any]


class _Missing:
    """Sentinel for "no default" / "no such input"; a class so mypy can narrow on it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()
_EMPTY_INPUT: Final[Mapping[str, Any]] = types.MappingProxyType({})


class _Parameter:
    """One named parameter, with everything ``bind`` needs precomputed."""

    __slots__ = ("default", "name", "null_is_missing", "type_name", "validate")

    def __init__(
        self, name: str, validate: _Validator | None, default: object, type_name: str
    ) -> None:
        self.name = name
        self.validate = validate  # None: pass the raw value through
        self.default = default  # _MISSING: the input is required
        self.type_name = type_name
        # A workflow that wires `${workflow.input.x}` without an x sends null, not nothing: for
        # a parameter with a default whose type rejects None, null means "use the default".
        self.null_is_missing = False
        if default is not _MISSING and validate is not None:
            try:
                validate(None)
            except Exception:
                self.null_is_missing = True


class InputBinder:
    """Turns a task into the ``(args, kwargs)`` for one worker function.

    Build it once per function with :meth:`for_function`, then call :meth:`bind` per task::

        binder = InputBinder.for_function(resize_image, Task)
        args, kwargs = binder.bind(task)
        result = resize_image(*args, **kwargs)

    Attributes:
        function_name: ``module.qualname`` of the function, for messages and logs.
        takes_task: the function receives the task object itself instead of its inputs.
        parameter_names: the named parameters bound from the input, in signature order.
        accepts_extra_inputs: the function has ``**kwargs``, which receives unbound inputs.
    """

    __slots__ = (
        "_bound_names",
        "_keyword",
        "_positional",
        "_task_keyword",
        "_var_keyword",
        "accepts_extra_inputs",
        "function_name",
        "parameter_names",
        "takes_task",
    )

    def __init__(
        self,
        *,
        function_name: str,
        takes_task: bool,
        task_keyword: str | None = None,
        positional: tuple[_Parameter, ...] = (),
        keyword: tuple[_Parameter, ...] = (),
        var_keyword: _Parameter | None = None,
    ) -> None:
        """Internal: use :meth:`for_function`."""
        self.function_name = function_name
        self.takes_task = takes_task
        self._task_keyword = task_keyword
        self._positional = positional
        self._keyword = keyword
        self._var_keyword = var_keyword
        self.parameter_names = tuple(p.name for p in (*positional, *keyword))
        self._bound_names = frozenset(self.parameter_names)
        self.accepts_extra_inputs = var_keyword is not None

    @classmethod
    def for_function(cls, fn: Callable[..., Any], task_type: type) -> InputBinder:
        """Analyse ``fn``'s signature into a binder.

        Args:
            fn: the worker function: a plain or ``async`` function, a bound method, a
                ``functools.partial`` or a callable object.
            task_type: the task model class; a sole parameter annotated with it (or a subclass)
                receives the task itself.

        Raises:
            WorkerSignatureError: the signature cannot be bound: it has ``*args``, an annotation
                that cannot be resolved or that pydantic cannot convert to, or a task-annotated
                parameter that is not the only one.
        """
        name = _function_name(fn)
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise WorkerSignatureError(
                f"cannot read the signature of worker function {name}: {exc}"
            ) from exc
        params = list(signature.parameters.values())
        hints = _resolve_hints(fn, params, name)

        for param in params:
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                raise WorkerSignatureError(
                    f"worker function {name} takes *{param.name}: task inputs are bound by name, "
                    "so positional varargs cannot receive anything; use named parameters or "
                    "**kwargs"
                )

        if (
            len(params) == 1
            and params[0].kind is not inspect.Parameter.VAR_KEYWORD
            and _is_task_annotation(hints.get(params[0].name), task_type)
        ):
            only = params[0]
            keyword = only.name if only.kind is inspect.Parameter.KEYWORD_ONLY else None
            return cls(function_name=name, takes_task=True, task_keyword=keyword)

        positional: list[_Parameter] = []
        keyword_params: list[_Parameter] = []
        var_keyword: _Parameter | None = None
        for param in params:
            hint = hints.get(param.name, Any)
            if _is_task_annotation(hint, task_type):
                raise WorkerSignatureError(
                    f"parameter {param.name!r} of worker function {name} is annotated with the "
                    f"task class {task_type.__qualname__}; a worker that receives the task must "
                    "take it as its only parameter"
                )
            default = _MISSING if param.default is inspect.Parameter.empty else param.default
            bound = _Parameter(
                param.name, _make_validator(hint, param.name, name), default, _type_name(hint)
            )
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                positional.append(bound)
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                var_keyword = bound
            else:
                keyword_params.append(bound)
        return cls(
            function_name=name,
            takes_task=False,
            positional=tuple(positional),
            keyword=tuple(keyword_params),
            var_keyword=var_keyword,
        )

    def bind(self, task: Any) -> tuple[list[Any], dict[str, Any]]:
        """Return the ``(args, kwargs)`` to call the function with for ``task``.

        Raises:
            InputBindingError: a required input is missing, an input cannot be converted to its
                parameter's annotation, or ``task.input_data`` is not a JSON object.
        """
        if self.takes_task:
            if self._task_keyword is not None:
                return [], {self._task_keyword: task}
            return [task], {}

        data = task.input_data
        if data is None:
            data = _EMPTY_INPUT
        elif type(data) is not dict and not isinstance(data, Mapping):
            raise InputBindingError(f"task input must be a JSON object, got {type(data).__name__}")

        args: list[Any] = []
        for param in self._positional:
            value = data.get(param.name, _MISSING)
            if value is _MISSING or (value is None and param.null_is_missing):
                if param.default is _MISSING:
                    raise _missing(param.name)
                # A later positional-only input may be present, so pass the default explicitly.
                args.append(param.default)
            elif param.validate is None:
                args.append(value)
            else:
                args.append(_convert(param, param.name, value))

        kwargs: dict[str, Any] = {}
        for param in self._keyword:
            value = data.get(param.name, _MISSING)
            if value is _MISSING or (value is None and param.null_is_missing):
                if param.default is _MISSING:
                    raise _missing(param.name)
                continue  # let Python apply the default
            kwargs[param.name] = (
                value if param.validate is None else _convert(param, param.name, value)
            )

        extra = self._var_keyword
        if extra is not None:
            bound = self._bound_names
            for key, value in data.items():
                if key not in bound:
                    kwargs[key] = value if extra.validate is None else _convert(extra, key, value)
        return args, kwargs

    def __repr__(self) -> str:
        if self.takes_task:
            return f"<InputBinder {self.function_name} (takes the task)>"
        names = ", ".join(self.parameter_names)
        extra = ", **extra" if self.accepts_extra_inputs else ""
        return f"<InputBinder {self.function_name}({names}{extra})>"


# --- binding helpers (per task) --------------------------------------------------------------


def _missing(name: str) -> InputBindingError:
    return InputBindingError(f"missing required input {name!r}", parameter=name)


def _convert(param: _Parameter, name: str, value: object) -> Any:
    validate = param.validate
    assert validate is not None
    try:
        return validate(value)
    except pydantic.ValidationError as exc:
        # ``from None``: pydantic's own message can list every error with every input; the
        # summary below is what belongs in a task's failure reason and in logs.
        raise InputBindingError(_summarize(name, param.type_name, exc), parameter=name) from None


def _summarize(name: str, type_name: str, exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False, include_context=False)
    parts = []
    for error in errors[:_MAX_ERRORS_SHOWN]:
        where = _format_loc(name, error["loc"])
        got = _short_repr(error.get("input"))
        prefix = f"{where}: " if where else ""
        parts.append(f"{prefix}{error['msg']} (got {got})")
    message = f"invalid input {name!r} (expected {type_name}): " + "; ".join(parts)
    hidden = len(errors) - _MAX_ERRORS_SHOWN
    if hidden > 0:
        message += f"; and {hidden} more error{'s' if hidden > 1 else ''}"
    return message


def _format_loc(name: str, loc: tuple[int | str, ...]) -> str:
    if not loc:
        return ""
    out = [name]
    for item in loc:
        if isinstance(item, int):
            out.append(f"[{item}]")
        elif item.isidentifier():
            out.append(f".{item}")
        else:
            out.append(f"[{item!r}]")
    return "".join(out)


_repr = reprlib.Repr()
_repr.maxstring = _MAX_INPUT_REPR
_repr.maxother = _MAX_INPUT_REPR
_repr.maxlevel = 3
_repr.maxdict = _repr.maxlist = _repr.maxtuple = _repr.maxset = 8


def _short_repr(value: object) -> str:
    # reprlib bounds the work for huge values; the cut bounds the length whatever reprlib does.
    text = _repr.repr(value)
    if len(text) > _MAX_INPUT_REPR:
        text = text[: _MAX_INPUT_REPR - 3] + "..."
    return text


# --- analysis helpers (once per function) ----------------------------------------------------


def _function_name(fn: object) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{qualname}"


def _annotation_owner(fn: object) -> Any:
    """The object whose ``__annotations__`` describe ``fn``'s parameters."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        return fn
    if isinstance(fn, type):
        return typing.cast(Any, fn).__init__
    return type(fn).__call__  # a callable object


def _resolve_hints(fn: object, params: list[inspect.Parameter], name: str) -> dict[str, Any]:
    owner = _annotation_owner(fn)
    try:
        return typing.get_type_hints(owner, include_extras=True)
    except Exception:  # resolved again below, one parameter at a time
        pass
    # Fall back to one parameter at a time: this names the parameter at fault, and a return
    # annotation that cannot be resolved (it is never used here) stops being an error.
    globalns = getattr(inspect.unwrap(owner), "__globals__", {})
    hints: dict[str, Any] = {}
    for param in params:
        if param.annotation is inspect.Parameter.empty:
            continue
        try:
            hints[param.name] = _resolve_one(param.annotation, globalns)
        except Exception as exc:
            raise WorkerSignatureError(
                f"cannot resolve the annotation {param.annotation!r} of parameter "
                f"{param.name!r} of worker function {name} ({type(exc).__name__}: {exc}); "
                "annotations are evaluated when the worker is registered, so every name they "
                "use must exist at module level by then (not only under `if TYPE_CHECKING:`)"
            ) from exc
    return hints


def _probe() -> None:
    """Code object reused to evaluate one annotation in a function's globals."""


def _resolve_one(annotation: object, globalns: dict[str, Any]) -> Any:
    probe = types.FunctionType(_probe.__code__, globalns)
    probe.__annotations__ = {"value": annotation}
    return typing.get_type_hints(probe, include_extras=True)["value"]


def _is_task_annotation(hint: object, task_type: type) -> bool:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    # On Python 3.10 ``isinstance(list[int], type)`` is True, hence the get_origin check.
    if not isinstance(hint, type) or typing.get_origin(hint) is not None:
        return False
    try:
        return issubclass(hint, task_type)
    except TypeError:
        return False


def _make_validator(hint: Any, param: str, function_name: str) -> _Validator | None:
    if hint is Any:
        return None
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(hint)
        if getattr(adapter, "pydantic_complete", True) is False:
            # Forward references pydantic could not resolve; rebuild() raises the precise
            # error (pydantic >= 2.10; older versions fail on first use instead).
            adapter.rebuild(raise_errors=True)
            if getattr(adapter, "pydantic_complete", True) is False:
                raise TypeError("it references types that are not defined")
    except pydantic.errors.PydanticSchemaGenerationError as exc:
        # pydantic's advice (arbitrary_types_allowed) does not apply: input is plain JSON.
        detail = str(exc).split(". ", 1)[0]
        raise WorkerSignatureError(
            f"cannot convert task input to the annotation {_type_name(hint)} of parameter "
            f"{param!r} of worker function {function_name}: {detail}; use a type pydantic can "
            "validate, or annotate the parameter with Any to receive the raw JSON value"
        ) from exc
    except Exception as exc:
        detail = str(exc).split("\n", 1)[0]
        raise WorkerSignatureError(
            f"cannot convert task input to the annotation {_type_name(hint)} of parameter "
            f"{param!r} of worker function {function_name}: {detail}"
        ) from exc
    return adapter.validate_python


def _type_name(hint: object) -> str:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]  # the constraints show up in pydantic's messages
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        text = hint.__qualname__
    else:
        text = repr(hint).replace("typing.", "")
    if len(text) > _MAX_TYPE_REPR:
        text = text[: _MAX_TYPE_REPR - 3] + "..."
    return text
