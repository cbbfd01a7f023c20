"""The workflow the reliability runs use: a task for a `def` worker, then one for an
`async def` worker, both retried by the server after a failure or a response timeout."""

from __future__ import annotations

from tests.integration.conftest import Conductor


def two_task_workflow(
    conductor: Conductor, name: str, *, retry_count: int, response_timeout_seconds: int
) -> tuple[str, str, str]:
    """Registers the definitions under unique names: (sync task type, async task type,
    workflow name)."""
    sync_type, async_type = (
        conductor.task_def(
            f"{name}_{kind}",
            retry_count=retry_count,
            retry_delay_seconds=0,
            response_timeout_seconds=response_timeout_seconds,
        )
        for kind in ("sync", "async")
    )
    return (
        sync_type,
        async_type,
        conductor.workflow_def([sync_type, async_type], prefix=f"{name}_wf"),
    )
