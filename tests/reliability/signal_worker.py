"""A worker process for test_sigterm.py: runs a TaskRunner until SIGINT/SIGTERM.

    python tests/reliability/signal_worker.py URL SYNC_TYPE ASYNC_TYPE SECONDS BATCH GRACE

One sync worker (SYNC_TYPE) and one async worker (ASYNC_TYPE), each taking SECONDS per task,
BATCH of each at once. Prints "READY" once polling, "STARTED <task id>" when a task begins and
"FINISHED <task id>" when its function returns (the test reads stdout). Exits 0 when the runner
stopped cleanly, 1 otherwise; a second signal makes the runner exit at once with 128 + signal.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import Any

from conductor_worker import ConductorClient, HttpSettings, Task, TaskRunner

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    url, sync_type, async_type, seconds_text, batch_text, grace_text = argv
    seconds, batch, grace = float(seconds_text), int(batch_text), float(grace_text)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def sync_worker(task: Task) -> dict[str, Any]:
        say(f"STARTED {task.task_id}")
        time.sleep(seconds)
        say(f"FINISHED {task.task_id}")
        return {"by": "sync", "taskId": task.task_id}

    async def async_worker(task: Task) -> dict[str, Any]:
        say(f"STARTED {task.task_id}")
        await asyncio.sleep(seconds)
        say(f"FINISHED {task.task_id}")
        return {"by": "async", "taskId": task.task_id}

    runner = TaskRunner(ConductorClient(http=HttpSettings(url)), shutdown_grace_seconds=grace)
    runner.start_worker(sync_type, sync_worker, batch_size=batch, poll_interval=0.1)
    runner.start_worker(async_type, async_worker, batch_size=batch, poll_interval=0.1)
    say("READY")
    runner.wait_workers()
    clean = runner.shutdown()  # already stopped: returns how the shutdown went
    say(f"EXIT {'clean' if clean else 'unclean'}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
