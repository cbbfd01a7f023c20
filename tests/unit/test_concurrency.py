"""Unit tests for conductor_worker.concurrency: the growing thread pool, the event loop thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest

from conductor_worker.concurrency import ThreadPool
from conductor_worker.event_loop import EventLoopThread


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    thread_pool = ThreadPool("test-pool")
    yield thread_pool
    thread_pool.close()


def run_one(pool: ThreadPool, fn: Callable[[], object] = lambda: None) -> threading.Thread:
    """Submit `fn`, wait for it, and return the thread that ran it."""
    done: Future[threading.Thread] = Future()

    def job() -> None:
        fn()
        done.set_result(threading.current_thread())

    pool.submit(job)
    return done.result(timeout=5)


# -- ThreadPool ---------------------------------------------------------------------------------


def test_pool_runs_jobs_with_their_arguments(pool: ThreadPool) -> None:
    results: Future[tuple[int, str, str]] = Future()

    pool.submit(lambda a, b: results.set_result((a, b, threading.current_thread().name)), 1, "x")

    number, text, thread_name = results.result(timeout=5)
    assert (number, text) == (1, "x")
    assert thread_name.startswith("test-pool-")
    assert thread_name != threading.current_thread().name


def test_pool_starts_no_thread_before_the_first_job(pool: ThreadPool) -> None:
    assert pool.size == 0


def test_pool_threads_are_daemons(pool: ThreadPool) -> None:
    assert run_one(pool).daemon


def test_pool_reuses_idle_threads_for_sequential_jobs(pool: ThreadPool) -> None:
    threads = {run_one(pool) for _ in range(30)}

    # A thread marks itself idle just after its job returns, so a job submitted in that instant
    # may start one more thread; after that there is always an idle one.
    assert pool.size <= 2
    assert len(threads) <= 2


def test_pool_grows_under_concurrent_load(pool: ThreadPool) -> None:
    count = 6
    # Every job waits for all the others: only possible if each runs on its own thread.
    barrier = threading.Barrier(count + 1, timeout=5)
    names: set[str] = set()
    lock = threading.Lock()

    def job() -> None:
        with lock:
            names.add(threading.current_thread().name)
        barrier.wait()

    for _ in range(count):
        pool.submit(job)
    barrier.wait()

    assert pool.size == count
    assert len(names) == count


def test_pool_keeps_its_threads_after_a_peak(pool: ThreadPool) -> None:
    count = 4
    barrier = threading.Barrier(count + 1, timeout=5)
    for _ in range(count):
        pool.submit(barrier.wait)
    barrier.wait()

    threads = {run_one(pool) for _ in range(10)}

    assert pool.size == count  # the idle threads were reused: no new ones
    assert all(thread.is_alive() for thread in threads)


def test_raising_job_is_logged_and_does_not_kill_its_thread(
    pool: ThreadPool, caplog: pytest.LogCaptureFixture
) -> None:
    failing: Future[threading.Thread] = Future()

    def explode() -> None:
        failing.set_result(threading.current_thread())
        raise RuntimeError("job bug")

    with caplog.at_level(logging.ERROR, logger="conductor_worker.concurrency"):
        pool.submit(explode)
        thread = failing.result(timeout=5)
        wait_for(lambda: any(r.exc_info for r in caplog.records))

    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert thread.name in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    # The same thread goes on to run later jobs.
    wait_for(lambda: run_one(pool) is thread)
    assert thread.is_alive()
    assert pool.size <= 2


def test_base_exception_in_a_job_does_not_kill_its_thread(pool: ThreadPool) -> None:
    failing: Future[threading.Thread] = Future()

    def exit_job() -> None:
        failing.set_result(threading.current_thread())
        raise SystemExit(3)

    pool.submit(exit_job)
    thread = failing.result(timeout=5)

    wait_for(lambda: run_one(pool) is thread)


def test_closed_pool_rejects_jobs_and_lets_idle_threads_exit() -> None:
    pool = ThreadPool("closing-pool")
    threads = [run_one(pool) for _ in range(3)]

    pool.close()

    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(print)
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()


def test_close_lets_a_running_job_finish() -> None:
    pool = ThreadPool("closing-pool")
    release = threading.Event()
    finished: Future[bool] = Future()
    pool.submit(lambda: finished.set_result(release.wait(5)))

    pool.close()
    release.set()

    assert finished.result(timeout=5) is True


# -- EventLoopThread ----------------------------------------------------------------------------


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    runner = EventLoopThread("test-loop")
    yield runner
    runner.stop()


def test_event_loop_thread_runs_coroutines(loop_thread: EventLoopThread) -> None:
    async def compute(x: int) -> tuple[int, str, bool]:
        await asyncio.sleep(0)
        return (
            x * 2,
            threading.current_thread().name,
            asyncio.get_running_loop() is loop_thread.loop,
        )

    assert loop_thread.submit(compute(21)).result(timeout=5) == (42, "test-loop", True)


def test_event_loop_thread_runs_coroutines_concurrently(loop_thread: EventLoopThread) -> None:
    count = 20
    arrived = 0
    all_here = asyncio.Event()

    async def meet() -> int:
        nonlocal arrived
        arrived += 1
        if arrived == count:
            all_here.set()
        await asyncio.wait_for(all_here.wait(), 5)  # only returns if all run at once
        return arrived

    futures = [loop_thread.submit(meet()) for _ in range(count)]

    assert [f.result(timeout=5) for f in futures] == [count] * count


def test_event_loop_thread_propagates_exceptions(loop_thread: EventLoopThread) -> None:
    async def fail() -> None:
        raise ValueError("inside the loop")

    with pytest.raises(ValueError, match="inside the loop"):
        loop_thread.submit(fail()).result(timeout=5)


def test_event_loop_thread_stops_and_closes_its_loop() -> None:
    runner = EventLoopThread("stopping-loop")
    thread: threading.Thread = runner.submit(_current_thread()).result(timeout=5)
    assert thread.daemon

    runner.stop(timeout=5)

    assert not thread.is_alive()
    assert runner.loop.is_closed()
    runner.stop()  # a second stop is a no-op


async def _current_thread() -> threading.Thread:
    return threading.current_thread()
