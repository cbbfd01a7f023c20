"""Where `def` worker code runs: a growing pool of daemon threads (the event loop thread for
`async def` workers is in event_loop.py).

Daemon threads, so that a forced exit (a second Ctrl-C) is not held up by a worker that never
returns; the graceful path waits for them explicitly.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ThreadPool:
    """Runs submitted callables; starts a thread only when none is idle.

    The runner bounds concurrency with its slots, so the pool itself needs no limit: it grows
    to the peak number of tasks running at once and keeps those threads.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the thread pool is closed")
            if self._idle:
                self._idle -= 1  # that thread is now reserved for this job
            else:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put((fn, args))

    def is_pool_thread(self) -> bool:
        """Whether the calling thread is one of this pool's."""
        with self._lock:
            return threading.current_thread() in self._threads

    @property
    def size(self) -> int:
        return len(self._threads)

    def close(self) -> None:
        """Let idle threads exit; running jobs finish on their own."""
        with self._lock:
            self._closed = True
            count = len(self._threads)
        for _ in range(count):
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except BaseException:  # the job is expected to handle its own errors
                log.exception("unexpected error in %s", threading.current_thread().name)
            # An idle thread must not keep its last job (a task and its input) alive.
            del job, fn, args
            with self._lock:
                self._idle += 1
