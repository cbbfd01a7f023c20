"""The `conductor-worker` command: run the workers declared in Python modules.

    conductor-worker run myapp.workers [more.modules ...]

Exit codes: 0 stopped cleanly; 1 stopped but some task did not finish or some result was not
delivered; 2 bad command line or configuration (a worker function whose signature cannot be
bound, too); 3 a module could not be imported; 4 no workers found; 5 the server cannot be
reached, or no Conductor API answers at that URL; 6 the server refused the credentials;
130/143 forced exit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import Any

EXIT_OK = 0
EXIT_UNCLEAN = 1
EXIT_USAGE = 2
EXIT_IMPORT = 3
EXIT_NO_WORKERS = 4
EXIT_UNREACHABLE = 5
EXIT_AUTH = 6

log = logging.getLogger("conductor_worker.cli")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conductor-worker",
        description="Run Conductor workers declared with @worker_task in Python modules.",
        epilog="Environment: CONDUCTOR_SERVER_URL, CONDUCTOR_AUTH_KEY, CONDUCTOR_AUTH_SECRET, "
        "and CONDUCTOR_WORKER_[<TASK_TYPE>_]<OPTION> for per-worker options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="import modules and run the workers they declare until SIGINT/SIGTERM",
        description="Import the modules, start every worker they declare, run until SIGINT or "
        "SIGTERM, then drain: running tasks finish and their results are delivered. "
        "A second signal exits at once.",
    )
    run.add_argument("modules", nargs="+", metavar="MODULE", help="e.g. myapp.workers")
    server = run.add_argument_group("server")
    server.add_argument(
        "--server-url",
        metavar="URL",
        help="API base URL (default: $CONDUCTOR_SERVER_URL or http://localhost:8080/api)",
    )
    server.add_argument(
        "--auth-key", metavar="ID", help="Orkes key id (default: $CONDUCTOR_AUTH_KEY)"
    )
    server.add_argument(
        "--auth-secret",
        metavar="SECRET",
        help="Orkes key secret (default: $CONDUCTOR_AUTH_SECRET; prefer the variable: "
        "command lines are visible to other users)",
    )
    server.add_argument("--ca-bundle", metavar="PEM", help="CA certificates to trust for TLS")
    workers = run.add_argument_group("workers")
    workers.add_argument("--domain", help="poll this task domain (all workers)")
    workers.add_argument("--worker-id", help="worker id reported to the server (default: host)")
    workers.add_argument(
        "--grace",
        default="30",  # validated in run(): a bad value is one line and exit 2, like the rest
        metavar="SECONDS",
        help="how long a shutdown waits for running tasks (default: 30)",
    )
    ops = run.add_argument_group("operations")
    ops.add_argument(
        "--metrics-port",
        type=int,
        default=2112,
        metavar="PORT",
        help="serve Prometheus metrics on this port (default: 2112; 0 picks a free one)",
    )
    ops.add_argument("--metrics-address", default="0.0.0.0", help="metrics bind address")
    ops.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    ops.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: INFO)",
    )
    ops.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="(default: text)"
    )
    return parser


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("urllib3").setLevel(max(logging.getLevelName(level), logging.WARNING))


def import_modules(names: Sequence[str]) -> list[ModuleType]:
    # Modules given as `pkg.mod` are found relative to the current directory, as `python -m`.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            if error.name and name.startswith(error.name):
                raise CliError(
                    f"no module named {name!r} (is it on PYTHONPATH?)", EXIT_IMPORT
                ) from None
            raise CliError(_import_failure(name), EXIT_IMPORT) from None
        except Exception:
            raise CliError(_import_failure(name), EXIT_IMPORT) from None
    return modules


def _import_failure(name: str) -> str:
    last = traceback.format_exc().strip().splitlines()
    return f"importing {name!r} failed: {last[-1] if last else 'unknown error'}"


def grace_seconds(text: str) -> float:
    """The --grace value: a finite number of seconds >= 0 (inf would overflow the shutdown's
    deadline, nan compares false with everything, a negative one abandons running tasks)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise CliError(f"--grace must be a finite number of seconds >= 0, got {text!r}", EXIT_USAGE)
    return seconds


def check_signatures(declared: Sequence[Any]) -> None:
    """Analyse every worker function's signature now: a bad one is a configuration error
    (exit 2), reported before anything connects to the server."""
    from conductor_worker.errors import WorkerSignatureError
    from conductor_worker.execution import WorkerFunction

    for declaration in declared:
        try:
            WorkerFunction(declaration.fn)
        except WorkerSignatureError as error:
            raise CliError(
                f"task type {declaration.task_type!r}: {_one_line(str(error))}", EXIT_USAGE
            ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def check_server(client: Any, task_type: str) -> None:
    """Fail fast, with a clear message, when the server is unreachable or refuses us."""
    from urllib3.exceptions import MaxRetryError

    from conductor_client.auth import AuthenticationError
    from conductor_client.exceptions import ApiException

    url = client.http.base_url
    try:
        client.tasks.get_queue_size(task_type, _request_timeout=(5.0, 10.0))
    except AuthenticationError as error:
        raise CliError(f"the server at {url} refused the credentials: {error}", EXIT_AUTH) from None
    except ApiException as error:
        if error.status in (401, 403):
            raise CliError(
                f"the server at {url} refused the credentials (HTTP {error.status})", EXIT_AUTH
            ) from None
        if error.status == 0 or error.status is None:
            raise CliError(
                f"cannot reach the server at {url}: {error.reason}", EXIT_UNREACHABLE
            ) from None
        if error.status == 404:
            # Every Conductor server serves GET /tasks/queue/size: a 404 means the URL's path
            # is wrong (typically the base URL without /api; the server answers "No static
            # resource"), and every poll would fail the same way.
            raise CliError(_not_an_api(url, "answered 404 Not Found"), EXIT_UNREACHABLE) from None
        # Any other answer means a server is there; the workers report their own errors.
    except ValueError:
        # A number is what every Conductor server answers here. Anything else is another
        # service, or the server's web UI: the 3.x server serves its pages outside /api.
        raise CliError(
            _not_an_api(url, "answered something that is not a queue size, e.g. a web page"),
            EXIT_UNREACHABLE,
        ) from None
    except Exception as error:
        # urllib3 wraps the cause ("Max retries exceeded ..." although retries are off).
        cause = getattr(error, "reason", None) if isinstance(error, MaxRetryError) else None
        detail = cause if isinstance(cause, Exception) else error
        raise CliError(
            f"cannot reach the server at {url}: {type(detail).__name__}: {detail}",
            EXIT_UNREACHABLE,
        ) from None


def _not_an_api(url: str, answer: str) -> str:
    base = url.rstrip("/")
    hint = (
        "check the path of the server URL"
        if base.endswith("/api")
        else f"the API base URL usually ends in /api: try {base}/api"
    )
    return f"no Conductor API at {url} (GET {base}/tasks/queue/size {answer}); {hint}"


def run(args: argparse.Namespace) -> int:
    from conductor_worker.client import ConductorClient
    from conductor_worker.declarations import declarations_of, unique
    from conductor_worker.metrics import MetricsSettings, start_metrics_server
    from conductor_worker.runner import TaskRunner
    from conductor_worker.settings import AuthenticationSettings, HttpSettings

    grace = grace_seconds(args.grace)
    modules = import_modules(args.modules)
    declared = unique(d for module in modules for d in declarations_of(module))
    if not declared:
        raise CliError(
            f"no workers found in {', '.join(args.modules)}: declare them with @worker_task",
            EXIT_NO_WORKERS,
        )
    check_signatures(declared)
    auth = AuthenticationSettings.from_env()
    if args.auth_key or args.auth_secret:
        auth = AuthenticationSettings(
            args.auth_key or os.environ.get("CONDUCTOR_AUTH_KEY", ""),
            args.auth_secret or os.environ.get("CONDUCTOR_AUTH_SECRET", ""),
        )
    http = HttpSettings.from_env()
    if args.server_url:
        http = HttpSettings(base_url=args.server_url)
    if args.ca_bundle:
        http = HttpSettings(base_url=http.base_url, ca_bundle=args.ca_bundle)
    client = ConductorClient(auth, http)
    check_server(client, declared[0].task_type)

    metrics_server = None
    if not args.no_metrics:
        try:
            metrics_server = start_metrics_server(
                MetricsSettings(port=args.metrics_port, address=args.metrics_address)
            )
        except OSError as error:  # typically: the port is taken (another worker on this host)
            raise CliError(
                f"cannot serve metrics on {args.metrics_address}:{args.metrics_port}: "
                f"{error.strerror or error} (choose another --metrics-port, or --no-metrics)",
                EXIT_USAGE,
            ) from None
        log.info(
            "metrics at %s (listening on %s:%d)",
            metrics_server.url, args.metrics_address, metrics_server.port,
        )  # fmt: skip
    runner = TaskRunner(client, shutdown_grace_seconds=grace)
    try:
        for declaration in declared:
            options = dict(declaration.options)
            if args.domain:
                options["domain"] = args.domain
            if args.worker_id:
                options["worker_id"] = args.worker_id
            runner.start_worker(declaration.task_type, declaration.fn, **options)
        log.info("running %d worker(s); Ctrl-C or SIGTERM to stop", len(declared))
        runner.wait_workers(handle_signals=True)
    finally:
        clean = runner.shutdown()
        if metrics_server is not None:
            metrics_server.stop()
        client.close()
    return EXIT_OK if clean else EXIT_UNCLEAN


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    started = time.monotonic()
    try:
        code = run(args)
    except CliError as error:
        print(f"conductor-worker: error: {error}", file=sys.stderr)
        return error.code
    except Exception as error:  # a configuration error, typically
        from conductor_worker.errors import ConductorWorkerError

        if isinstance(error, ConductorWorkerError):
            print(f"conductor-worker: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        raise
    log.debug("ran for %.1fs", time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
