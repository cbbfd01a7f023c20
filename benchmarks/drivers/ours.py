"""Benchmark driver: conductor_worker (this repo) with a no-op worker, until SIGTERM."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import parse_args

from conductor_worker import ConductorClient, HttpSettings, TaskRunner


def noop() -> dict[str, bool]:
    return {"ok": True}


async def noop_async() -> dict[str, bool]:
    return {"ok": True}


def main() -> None:
    args = parse_args()
    runner = TaskRunner(ConductorClient(http=HttpSettings(args.url)), shutdown_grace_seconds=5)
    fn = noop_async if args.mode == "async" else noop
    for task_type in args.types.split(","):
        runner.start_worker(
            task_type, fn, batch_size=args.concurrency, poll_interval=args.poll_interval
        )
    runner.wait_workers()


if __name__ == "__main__":
    main()
