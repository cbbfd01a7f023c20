"""The event loop thread for `async def` workers.

A module of its own so that only runners with async workers import asyncio (about a twentieth of
the package's import time).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """One asyncio event loop in a daemon thread, for `async def` workers."""

    def __init__(self, name: str = "conductor-asyncio") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def is_current_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop; wait up to `timeout` seconds for it (a blocked loop is left to its
        daemon thread)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.is_current_thread():
            return
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
