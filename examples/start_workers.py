"""Starting workers from your own code: "Starting Workers" of the original text.

    python -m examples.start_workers          # from the repository root; Ctrl-C to stop

The CLI (``conductor-worker run examples.workers``) does all of this for you; write it by
hand when the workers are part of a bigger program.
"""

from __future__ import annotations

import logging
import os

from conductor_worker import AuthenticationSettings, ConductorClient, HttpSettings, TaskRunner
from examples.workers import async_worker, long_running_worker, simple_worker, typed_worker


def make_client() -> ConductorClient:
    """A client for the server in CONDUCTOR_SERVER_URL (default http://localhost:8080/api).

    Orkes Conductor needs a key and secret; the OSS server needs none. Spelled out, without
    the environment, that is:

        ConductorClient(
            AuthenticationSettings(KEY, SECRET),
            HttpSettings("https://play.orkes.io/api"),
        )
    """
    key, secret = os.environ.get("CONDUCTOR_AUTH_KEY"), os.environ.get("CONDUCTOR_AUTH_SECRET")
    url = os.environ.get("CONDUCTOR_SERVER_URL", "http://localhost:8080/api")
    auth = AuthenticationSettings(key, secret) if key and secret else None
    # The same as ConductorClient.from_env().
    return ConductorClient(auth, HttpSettings(url))


def main() -> int:
    # The library only logs; a program decides where the logs go.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with make_client() as client:
        runner = TaskRunner(client)
        # Poll for "simple_task" with a batch size of 1 (one task at a time) and wait 1 second
        # between polls when no task is available.
        runner.start_worker("simple_task", simple_worker, batch_size=1, poll_interval=1.0)
        # Add more start_worker calls as needed.
        runner.start_worker("typed_task", typed_worker, batch_size=5, poll_interval=1.0)
        runner.start_worker("async_task", async_worker, batch_size=10, poll_interval=1.0)
        runner.start_worker("long_running_task", long_running_worker, batch_size=10)
        # Or start every @worker_task of a module at once: runner.start_workers(examples.workers)

        # Block until SIGINT/SIGTERM, which stop polling, let running tasks finish and
        # deliver their results (a second signal exits at once).
        runner.wait_workers()
        return 0 if runner.shutdown() else 1  # already stopped: tells whether it was clean


if __name__ == "__main__":
    raise SystemExit(main())
