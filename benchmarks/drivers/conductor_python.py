"""Benchmark driver: conductor-python (PyPI, pinned) with a no-op worker, until SIGTERM.

Runs in conductor-python's own virtual environment. Its TaskHandler starts one process per
task type (spawn); thread_count is its per-type concurrency, poll_interval is in milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import parse_args


def noop() -> dict:
    return {"ok": True}


async def noop_async() -> dict:
    return {"ok": True}


def main() -> None:
    from conductor.client.automator.task_handler import TaskHandler
    from conductor.client.configuration.configuration import Configuration
    from conductor.client.worker.worker import Worker

    args = parse_args()
    fn = noop_async if args.mode == "async" else noop
    workers = [
        Worker(
            task_definition_name=task_type,
            execute_function=fn,
            poll_interval=args.poll_interval * 1000.0,  # milliseconds in conductor-python
            thread_count=args.concurrency,
        )
        for task_type in args.types.split(",")
    ]
    handler = TaskHandler(
        workers=workers,
        configuration=Configuration(server_api_url=args.url),
        scan_for_annotated_workers=False,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    handler.start_processes()
    stop.wait()
    handler.stop_processes()


if __name__ == "__main__":
    main()
