"""Benchmark driver: the practical floor. urllib3 only, no SDK: one thread per task type
that batch-polls (long poll) and reports each result with POST /tasks. Until SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import urllib3
from common import parse_args

HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
POLL_TIMEOUT_MS = 2000


def noop() -> dict[str, bool]:
    return {"ok": True}


def loop(
    pool: urllib3.PoolManager,
    base: str,
    task_type: str,
    count: int,
    interval: float,
    stop: threading.Event,
) -> None:
    poll_url = (
        f"{base}/tasks/poll/batch/{quote(task_type, safe='')}?workerid=raw&count={count}"
        f"&timeout={POLL_TIMEOUT_MS}"
    )
    update_url = f"{base}/tasks"
    timeout = urllib3.Timeout(connect=5, read=30)
    while not stop.is_set():
        try:
            response = pool.request("GET", poll_url, headers=HEADERS, timeout=timeout)
            tasks = json.loads(response.data) if response.status == 200 and response.data else []
        except Exception:
            stop.wait(1.0)
            continue
        if not tasks:
            stop.wait(interval)
            continue
        for task in tasks:
            result = {
                "taskId": task["taskId"],
                "workflowInstanceId": task["workflowInstanceId"],
                "workerId": "raw",
                "status": "COMPLETED",
                "outputData": noop(),
            }
            with contextlib.suppress(Exception):
                pool.request(
                    "POST",
                    update_url,
                    body=json.dumps(result).encode(),
                    headers=HEADERS,
                    timeout=timeout,
                )


def main() -> None:
    args = parse_args()
    types = args.types.split(",")
    pool = urllib3.PoolManager(maxsize=len(types) + 1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [
        threading.Thread(
            target=loop,
            args=(pool, args.url.rstrip("/"), t, args.concurrency, args.poll_interval, stop),
            daemon=True,
        )
        for t in types
    ]
    for thread in threads:
        thread.start()
    while not stop.wait(0.5):
        pass


if __name__ == "__main__":
    main()
