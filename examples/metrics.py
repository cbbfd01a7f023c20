"""Worker metrics for Prometheus: "Worker Metrics" of the original text.

    python -m examples.metrics                 # from the repository root; Ctrl-C to stop
    curl -s localhost:2112/metrics | grep ^task_

Starts an HTTP endpoint that Prometheus scrapes, next to a runner with the example workers.
Every series carries a ``taskType`` label: task_poll_counter, task_poll_time, task_poll_error,
task_execute_time, task_execute_error, task_result_size, task_update_error, and a few more
(task_update_time, task_in_flight, task_free_slots, ...). Times are in seconds, sizes in bytes.
The CLI serves the same endpoint (``conductor-worker run --metrics-port 2112 ...``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import examples.workers
from conductor_worker import ConductorClient, MetricsSettings, TaskRunner, start_metrics_server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the example workers with metrics.")
    parser.add_argument(
        "--port", type=int, default=2112, help="metrics port (default 2112; 0 picks a free one)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    # MetricsSettings() is port 2112, path /metrics, on all interfaces. The server runs in a
    # background thread: start_metrics_server returns at once, with a handle to stop it.
    metrics = start_metrics_server(MetricsSettings(port=args.port))
    print(f"metrics at {metrics.url}", flush=True)
    try:
        with ConductorClient.from_env() as client:
            runner = TaskRunner(client)
            runner.start_workers(examples.workers)  # every @worker_task in the module
            runner.wait_workers()  # until SIGINT/SIGTERM
            return 0 if runner.shutdown() else 1
    finally:
        metrics.stop()


if __name__ == "__main__":
    raise SystemExit(main())
