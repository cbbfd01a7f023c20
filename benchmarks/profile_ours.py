"""Profile conductor_worker's hot path against the fake server, every thread, CPU clock (yappi).

    benchmarks/.venv-bench/bin/python benchmarks/profile_ours.py [--mode sync|async]
        [--types 1] [--tasks 20000] [--concurrency 10] [--top 40]

Prints the functions with the most own CPU time (tsub) and the most inclusive time (ttot),
per task. The fake server runs in a subprocess on another core (as in bench.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import urllib3
import yappi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "drivers"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("sync", "async"), default="sync")
    p.add_argument("--types", type=int, default=1)
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cmd = [sys.executable, str(HERE / "fake_server.py")]
    if len(cpus) > 1:
        server_cmd = ["taskset", "-c", str(cpus[0]), *server_cmd]
        os.sched_setaffinity(0, set(cpus[1:]))
    server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().decode().split()[1]
        base = f"http://127.0.0.1:{port}"
        http = urllib3.PoolManager()

        def stats() -> dict:
            import json

            return json.loads(http.request("GET", base + "/ctl/stats").data)

        from ours import noop, noop_async

        from conductor_worker import ConductorClient, HttpSettings, TaskRunner

        types = [f"prof_{i}" for i in range(a.types)]
        runner = TaskRunner(ConductorClient(http=HttpSettings(base + "/api")))
        for t in types:
            runner.start_worker(
                t,
                noop_async if a.mode == "async" else noop,
                batch_size=a.concurrency,
                poll_interval=0.1,
            )
        while len(stats()["first_poll"]) < len(types):
            time.sleep(0.05)
        per = a.tasks // len(types)
        yappi.set_clock_type("cpu")
        yappi.start(builtins=True, profile_threads=True)
        cpu0 = time.process_time()
        t0 = time.time()
        http.request("POST", f"{base}/ctl/load?types={','.join(types)}&n={per}")
        while stats()["completed"] < per * len(types):
            time.sleep(0.05)
        wall = time.time() - t0
        cpu = time.process_time() - cpu0
        yappi.stop()
        runner.shutdown(5)
        n = per * len(types)
        print(
            f"{n} tasks, {wall:.2f} s wall, {1000 * cpu / n:.3f} ms CPU/task (profiled; "
            f"the profiler itself inflates this)"
        )
        stats_ = yappi.get_func_stats()
        total = sum(s.tsub for s in stats_)
        for key, title in (("tsub", "own time"), ("ttot", "inclusive time")):
            print(f"\n== top {a.top} by {title} (us per task, % of profiled CPU) ==")
            stats_.sort(key, "desc")
            for s in list(stats_)[: a.top]:
                v = getattr(s, key)
                where = f"{Path(s.module).name}:{s.lineno}"
                print(f"{1e6 * v / n:9.1f} {100 * v / total:5.1f}%  {s.name:45.45s} {where}")
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
