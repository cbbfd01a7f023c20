"""The errors raised by conductor-worker, and the one users raise themselves.

Every error the library raises derives from :class:`ConductorWorkerError`, so a caller can catch
the library's failures with one ``except`` clause::

    ConductorWorkerError                root of the tree; never raised itself
     ├─ ConfigurationError              bad settings (also a ValueError)
     │   └─ WorkerSignatureError        a worker function's signature cannot be bound (also a
     │                                  TypeError, as before it had a class of its own)
     ├─ InputBindingError               a task's input does not fit the worker's parameters;
     │                                  terminal for the task
     ├─ OutputSerializationError        a worker's return value is not JSON-serializable;
     │                                  terminal for the task
     └─ NonRetryableError               raised BY USER CODE to fail the task with
                                        FAILED_WITH_TERMINAL_ERROR (no retries)

"Terminal for the task" means the runner reports the task as ``FAILED_WITH_TERMINAL_ERROR``:
retrying the same input against the same code would fail the same way.
"""

from __future__ import annotations

__all__ = [
    "ConductorWorkerError",
    "ConfigurationError",
    "InputBindingError",
    "NonRetryableError",
    "OutputSerializationError",
    "WorkerSignatureError",
]


class ConductorWorkerError(Exception):
    """Root of every error raised by conductor-worker."""


class ConfigurationError(ConductorWorkerError, ValueError):
    """A setting is missing, malformed or out of range.

    Also a :class:`ValueError`, so code that validates values generically still catches it.
    """


class WorkerSignatureError(ConfigurationError, TypeError):
    """A worker function cannot be registered: it is not callable, or its signature cannot be
    bound to task inputs (``*args``, an annotation that cannot be resolved or converted to, a
    task-annotated parameter next to others).

    Raised by ``start_worker`` when the worker is registered, never while tasks run. The message
    names the function and the parameter. Also a :class:`TypeError`, which is what earlier
    versions raised.
    """


class InputBindingError(ConductorWorkerError):
    """A task's ``inputData`` cannot be bound to the worker function's parameters.

    Raised when a required input is missing or an input cannot be converted to its parameter's
    annotation. The task fails terminally: the same input would fail again.

    Attributes:
        parameter: the name of the offending parameter (or ``**kwargs`` key), or ``None`` when
            the problem is the input as a whole (for example, it is not a JSON object).
    """

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class OutputSerializationError(ConductorWorkerError):
    """A worker's return value cannot be turned into JSON ``outputData``.

    The message starts with the JSON path of the offending value, for example
    ``$.items[3].value: float NaN is not valid JSON``. The task fails terminally.

    Attributes:
        path: the JSON path of the offending value (``$`` is the whole output).
    """

    def __init__(self, message: str, *, path: str = "$") -> None:
        super().__init__(message)
        self.path = path


class NonRetryableError(ConductorWorkerError):
    """Raise this from a worker function to fail the task without retries.

    The runner reports the task as ``FAILED_WITH_TERMINAL_ERROR`` with ``message`` as the reason,
    so Conductor does not retry it even if the task definition allows retries. Raise any other
    exception for an ordinary (retryable) failure.

    Example::

        def charge(order_id: str, amount: Decimal) -> dict[str, str]:
            if amount <= 0:
                raise NonRetryableError(f"amount must be positive, got {amount}")
            ...
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
