"""Compare conductor_worker ("ours") with conductor-python and a raw urllib3 loop.

Run through scripts/bench.sh, which builds the virtual environments. Each client runs in its
own process (drivers/*.py) with a no-op worker; this orchestrator measures it from outside:
the fake server's counters (requests, completions, first polls, pickup times) and the client
process tree's CPU time and peak RSS (psutil, /proc/<pid>/status VmHWM).

Server modes: "fake" (fake_server.py, clearly not Conductor: the client's own cost) and "real"
(a freshly started Conductor server via scripts/conductor-server.sh). Loopback only.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import urllib3

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DRIVERS = {"ours": "ours.py", "conductor-python": "conductor_python.py", "raw": "raw.py"}
SDKS = ("ours", "conductor-python", "raw")
HTTP = urllib3.PoolManager(maxsize=16)
ACTIVE: list[subprocess.Popen[bytes]] = []  # stopped on any exit, even an interrupted run


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Config:
    quick: bool
    reps: int
    concurrency: int
    poll_interval: float
    fake_tasks: int  # tasks per throughput run (split over the task types)
    idle_seconds: float
    pickup_samples: int
    real_workflows: int
    real_tasks_per_workflow: int
    modes: tuple[str, ...]
    pythons: dict[str, str]
    server_cpus: set[int]
    client_cpus: set[int]
    log_dir: Path
    sdks: tuple[str, ...] = SDKS


@dataclass
class Results:
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    units: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (unit, better)
    incidents: list[str] = field(default_factory=list)

    def add(self, key: str, sdk: str, value: float | None, unit: str, better: str) -> None:
        if value is None:
            return
        self.units[key] = (unit, better)
        self.values.setdefault(key, {}).setdefault(sdk, []).append(float(value))


# -- process tree measurements -----------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(pid: int) -> tuple[float, float]:
    """(ticks, precise): user+sys seconds of the process tree, two ways.

    psutil's figure counts in clock ticks (10 ms) per process; the per-thread schedstat run
    time is in nanoseconds but misses threads that have exited. cpu_delta() takes the larger
    of the two deltas.
    """
    ticks = precise = 0.0
    for proc in tree(pid):
        try:
            t = proc.cpu_times()
            ticks += t.user + t.system
        except psutil.NoSuchProcess:
            continue
        try:
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                try:
                    with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                        precise += int(f.read().split()[0]) / 1e9
                except OSError:
                    pass
        except OSError:
            pass
    return ticks, precise


def cpu_delta(before: tuple[float, float], after: tuple[float, float]) -> float:
    return max(after[0] - before[0], after[1] - before[1])


def tree_peak_rss_mb(pid: int) -> float:
    total_kb = 0
    for proc in tree(pid):
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total_kb += int(line.split()[1])
        except OSError:
            pass
    return total_kb / 1024.0


def taskset(cpus: set[int]) -> list[str]:
    if not cpus or not _has_taskset():
        return []
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus))]


def _has_taskset() -> bool:
    return subprocess.run(["sh", "-c", "command -v taskset"], capture_output=True).returncode == 0


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    if proc in ACTIVE:
        ACTIVE.remove(proc)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in its process group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def start_driver(
    cfg: Config, sdk: str, url: str, types: list[str], mode: str, name: str
) -> subprocess.Popen[bytes]:
    cmd = [
        *taskset(cfg.client_cpus),
        cfg.pythons[sdk],
        str(HERE / "drivers" / DRIVERS[sdk]),
        "--url",
        url,
        "--types",
        ",".join(types),
        "--mode",
        mode,
        "--concurrency",
        str(cfg.concurrency),
        "--poll-interval",
        str(cfg.poll_interval),
    ]
    out = open(cfg.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child's until it ends
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=str(HERE)
    )
    ACTIVE.append(proc)
    return proc


# -- fake server -------------------------------------------------------------------------------


class FakeServer:
    def __init__(self, cfg: Config) -> None:
        cmd = [*taskset(cfg.server_cpus), cfg.pythons["ours"], str(HERE / "fake_server.py")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, start_new_session=True)
        ACTIVE.append(self.proc)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.base = f"http://127.0.0.1:{line.split()[1]}"
        self.url = self.base + "/api"

    def _call(self, method: str, path: str) -> Any:
        r = HTTP.request(method, self.base + path, timeout=30)
        return json.loads(r.data)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/ctl/stats")  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._call("POST", "/ctl/reset")

    def load(self, types: list[str], n: int, timed: bool = False) -> float:
        q = f"/ctl/load?types={','.join(types)}&n={n}&timed={1 if timed else 0}"
        return float(self._call("POST", q)["loaded_at"])

    def close(self) -> None:
        stop_tree(self.proc)  # type: ignore[arg-type]


def wait_for(pred: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def fake_session(
    cfg: Config,
    server: FakeServer,
    res: Results,
    sdk: str,
    mode: str,
    n_types: int,
    *,
    idle: bool,
    pickup: bool,
    rep: int,
) -> None:
    label = f"fake/{mode}/{n_types}type"
    name = f"fake-{sdk}-{mode}-{n_types}-r{rep}"
    server.reset()
    types = [f"bench_task_{i}" for i in range(n_types)]
    t0 = time.time()
    proc = start_driver(cfg, sdk, server.url, types, mode, name)
    try:
        ok = wait_for(lambda: len(server.stats()["first_poll"]) >= n_types, 90, 0.02)
        if not ok:
            log(f"{name}: not every task type polled within 90 s; see {cfg.log_dir}/{name}.log")
            return
        first = server.stats()["first_poll"]
        res.add(f"{label}/startup_s", sdk, max(first.values()) - t0, "s", "lower")
        time.sleep(1.0)  # settle: thread pools, connections, backoff states

        if idle:
            s1, c1, w1 = server.stats(), tree_cpu(proc.pid), time.time()
            time.sleep(cfg.idle_seconds)
            s2, c2, w2 = server.stats(), tree_cpu(proc.pid), time.time()
            elapsed = w2 - w1
            res.add(
                f"{label}/idle_requests_per_s_per_type",
                sdk,
                idle_poll_rate(s1, s2, n_types, elapsed),
                "req/s",
                "lower",
            )
            res.add(
                f"{label}/idle_cpu_percent",
                sdk,
                100 * cpu_delta(c1, c2) / elapsed,
                "% of a core",
                "lower",
            )

        if pickup:
            before = len(server.stats()["pickup"])
            for _ in range(cfg.pickup_samples):
                server.load(types[:1], 1, timed=True)
                time.sleep(random.uniform(1.0, 2.0))
            wait_for(
                lambda: len(server.stats()["pickup_to_done"]) >= before + cfg.pickup_samples, 10
            )
            st = server.stats()
            # handout: task enqueued -> sent in a poll answer (what the server sees as pickup);
            # result: task enqueued -> its result received (the client's whole reaction time).
            for what, samples in (
                ("handout", st["pickup"][before:]),
                ("result", st["pickup_to_done"][before:]),
            ):
                if samples:
                    for q in (50, 90):
                        res.add(
                            f"{label}/pickup_{what}_p{q}_ms",
                            sdk,
                            1000 * percentile(samples, q / 100),
                            "ms",
                            "lower",
                        )

        per_type = max(1, cfg.fake_tasks // n_types)
        total = per_type * n_types
        done0 = server.stats()["completed"]
        c1 = tree_cpu(proc.pid)
        loaded_at = server.load(types, per_type)
        ok = wait_for(lambda: server.stats()["completed"] - done0 >= total, 60, 0.02)
        c2 = tree_cpu(proc.pid)
        st = server.stats()
        if not ok:
            lost = total - (st["completed"] - done0)
            log(f"{name}: only {st['completed'] - done0}/{total} tasks completed in 60 s")
            res.incidents.append(
                f"{name}: {lost} of {total} tasks never completed "
                f"(handed out, result not received); see logs/{name}.log"
            )
        else:
            res.add(
                f"{label}/throughput_tasks_per_s",
                sdk,
                total / (st["last_complete"] - loaded_at),
                "tasks/s",
                "higher",
            )
            res.add(
                f"{label}/cpu_ms_per_task", sdk, 1000 * cpu_delta(c1, c2) / total, "ms", "lower"
            )
        res.add(f"{label}/peak_rss_mb", sdk, tree_peak_rss_mb(proc.pid), "MB", "lower")
        others = {k: v for k, v in st["requests_by_kind"].items() if k.startswith("other")}
        if others or st["unknown_updates"]:
            log(f"{name}: unexpected requests {others}, unknown updates {st['unknown_updates']}")
    finally:
        stop_tree(proc)
    log(f"{name}: done")


def idle_poll_rate(s1: dict[str, Any], s2: dict[str, Any], n_types: int, elapsed: float) -> float:
    """Idle requests per second per task type.

    Counting the requests in a fixed window rounds to whole requests (3 long polls of 2.1 s in
    6 s read as 0.5 req/s, not 0.48), so each type's rate is measured between its last poll
    before the window and its last poll in it: n polls in exactly that time. Falls back to the
    window count for a type that polled less than once in the window.
    """
    rates = []
    for task_type, last in s2["last_poll"].items():
        polls = s2["polls_by_type"][task_type] - s1["polls_by_type"].get(task_type, 0)
        span = last - s1["last_poll"].get(task_type, last)
        rates.append(polls / span if polls and span > 0 else polls / elapsed)
    others = (s2["requests"] - s1["requests"]) - sum(
        s2["polls_by_type"][t] - s1["polls_by_type"].get(t, 0) for t in s2["polls_by_type"]
    )
    return (sum(rates) + others / elapsed) / n_types


def fake_sessions(cfg: Config) -> list[tuple[str, int, bool, bool]]:
    """(mode, task types, measure idle, measure pickup)."""
    return [
        ("sync", 1, True, True),
        ("sync", 10, True, False),
        ("sync", 5, False, False),
        ("async", 1, False, not cfg.quick),
        ("async", 10, False, False),
    ]


def run_fake(cfg: Config, res: Results) -> None:
    server = FakeServer(cfg)
    log(f"fake server (NOT Conductor) at {server.url}, cpus {sorted(cfg.server_cpus)}")
    try:
        for rep in range(cfg.reps):
            for sdk in cfg.sdks:
                for mode, n_types, idle, pickup in fake_sessions(cfg):
                    if sdk == "raw" and mode == "async":
                        continue  # the raw floor is one plain loop per type
                    fake_session(
                        cfg, server, res, sdk, mode, n_types, idle=idle, pickup=pickup, rep=rep
                    )
    finally:
        server.close()


# -- real server -------------------------------------------------------------------------------


class RealServer:
    def __init__(self) -> None:
        self.state_dir = tempfile.mkdtemp(prefix="bench-conductor-")
        env = dict(os.environ, CONDUCTOR_SERVER_STATE_DIR=self.state_dir)
        self.env = env
        out = subprocess.run(
            [str(REPO / "scripts" / "conductor-server.sh"), "start"],
            env=env,
            stdout=subprocess.PIPE,
            check=True,
            timeout=600,
        )
        self.url = out.stdout.decode().strip().splitlines()[-1]

    def call(self, method: str, path: str, body: Any = None) -> urllib3.BaseHTTPResponse:
        data = None if body is None else json.dumps(body).encode()
        r = HTTP.request(
            method,
            self.url + path,
            body=data,
            timeout=30,
            headers={"Content-Type": "application/json"},
        )
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {r.data[:300]!r}")
        return r

    def close(self) -> None:
        subprocess.run(
            [str(REPO / "scripts" / "conductor-server.sh"), "stop"], env=self.env, timeout=120
        )


def real_session(cfg: Config, server: RealServer, res: Results, sdk: str, rep: int) -> None:
    task_type = f"bench_{sdk.replace('-', '_')}_{rep}"
    wf_name = f"bench_wf_{task_type}"
    name = f"real-{sdk}-r{rep}"
    k = cfg.real_tasks_per_workflow
    server.call(
        "POST",
        "/metadata/taskdefs",
        [
            {
                "name": task_type,
                "retryCount": 0,
                "responseTimeoutSeconds": 600,
                "timeoutSeconds": 0,
                "ownerEmail": "bench@example.com",
            }
        ],
    )
    server.call(
        "PUT",
        "/metadata/workflow",
        [
            {
                "name": wf_name,
                "version": 1,
                "schemaVersion": 2,
                "ownerEmail": "bench@example.com",
                "tasks": [
                    {
                        "name": task_type,
                        "taskReferenceName": f"t{i}",
                        "type": "SIMPLE",
                        "inputParameters": {"orderId": "${workflow.input.orderId}"},
                    }
                    for i in range(k)
                ],
            }
        ],
    )
    proc = start_driver(cfg, sdk, server.url, [task_type], "sync", name)
    try:
        time.sleep(8.0)  # start-up (measured precisely in fake mode)
        c1 = tree_cpu(proc.pid)
        t1 = time.time()

        def start(i: int) -> str:
            return server.call(
                "POST", f"/workflow/{wf_name}", {"orderId": f"ord-{i:06d}", "amount": 129.95}
            ).data.decode()

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(start, range(cfg.real_workflows)))

        def running() -> int:
            r = server.call("GET", f"/workflow/running/{wf_name}?version=1")
            return len(json.loads(r.data))

        ok = wait_for(lambda: running() == 0, 300, 0.1)
        t2 = time.time()
        c2 = tree_cpu(proc.pid)
        if not ok:
            log(f"{name}: workflows still running after 300 s")
            return
        with ThreadPoolExecutor(8) as pool:
            workflows = list(
                pool.map(
                    lambda wf_id: json.loads(server.call("GET", f"/workflow/{wf_id}").data), ids
                )
            )
        not_completed = sum(w.get("status") != "COMPLETED" for w in workflows)
        if not_completed:
            log(f"{name}: {not_completed} workflow(s) did not complete")
        # The worker's figure ends with the last task result the server took. Now and then the
        # server leaves a workflow whose task is done to its sweeper (a lock race in its
        # decide, seen with every client), which can add a minute to the workflows' end.
        last_task_end = max(t["endTime"] for w in workflows for t in w["tasks"]) / 1000
        swept = sum(
            w["endTime"] / 1000 - max(t["endTime"] for t in w["tasks"]) / 1000 > 2
            for w in workflows
        )
        if swept:
            res.incidents.append(
                f"{name}: {swept} workflow(s) completed more than 2 s after "
                f"their last task (the server's sweeper); throughput ends at "
                f"the last task, {t2 - last_task_end:.1f} s before"
            )
        tasks = cfg.real_workflows * k
        res.add(
            "real/sync/1type/throughput_tasks_per_s",
            sdk,
            tasks / (min(t2, last_task_end) - t1),
            "tasks/s",
            "higher",
        )
        res.add(
            "real/sync/1type/cpu_ms_per_task", sdk, 1000 * cpu_delta(c1, c2) / tasks, "ms", "lower"
        )
    finally:
        stop_tree(proc)
    log(f"{name}: done")


def run_real(cfg: Config, res: Results) -> None:
    log("starting a real Conductor server (scripts/conductor-server.sh)")
    try:
        server = RealServer()
    except Exception as error:
        log(f"real server unavailable, skipping real mode: {error}")
        return
    log(f"real Conductor server at {server.url}")
    try:
        for rep in range(cfg.reps):
            for sdk in cfg.sdks:
                real_session(cfg, server, res, sdk, rep)
    finally:
        server.close()


# -- import time -------------------------------------------------------------------------------

IMPORTS = {
    "ours": "import conductor_worker",
    "conductor-python": "from conductor.client.automator.task_handler import TaskHandler; "
    "from conductor.client.worker.worker import Worker; "
    "from conductor.client.configuration.configuration import Configuration",
    "raw": "import urllib3",
}


def run_imports(cfg: Config, res: Results) -> None:
    for sdk in cfg.sdks:
        code = (
            "import time; t = time.perf_counter(); "
            + IMPORTS[sdk]
            + "; print(time.perf_counter() - t)"
        )
        cmd = [*taskset(cfg.client_cpus), cfg.pythons[sdk], "-c", code]
        subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache
        for _ in range(max(cfg.reps, 5)):
            out = subprocess.run(cmd, capture_output=True, check=True, cwd=str(HERE))
            res.add("import_s", sdk, float(out.stdout.decode().strip()), "s", "lower")


# -- main --------------------------------------------------------------------------------------


def summarise(res: Results, cfg: Config, started: float) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for key in sorted(res.values):
        unit, better = res.units[key]
        entry: dict[str, Any] = {"unit": unit, "better": better}
        for sdk, values in res.values[key].items():
            entry[sdk] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "runs": values,
            }
        figures[key] = entry
    return {
        "meta": {
            "quick": cfg.quick,
            "reps": cfg.reps,
            "concurrency_per_type": cfg.concurrency,
            "poll_interval_seconds": cfg.poll_interval,
            "fake_tasks_per_run": cfg.fake_tasks,
            "idle_window_seconds": cfg.idle_seconds,
            "pickup_samples": cfg.pickup_samples,
            "real_workflows": cfg.real_workflows,
            "real_tasks_per_workflow": cfg.real_tasks_per_workflow,
            "modes": list(cfg.modes),
            "server_cpus": sorted(cfg.server_cpus),
            "client_cpus": sorted(cfg.client_cpus),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "conductor_python_version": "2.0.0",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "duration_seconds": round(time.time() - started, 1),
            "notes": "fake = benchmarks/fake_server.py, NOT Conductor (client cost only); "
            "real = a fresh Conductor OSS server; ratios in latest.md",
        },
        "incidents": res.incidents,
        "figures": figures,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int)
    p.add_argument("--modes", default="fake,real")
    p.add_argument("--sdks", default=",".join(SDKS))
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument("--ours-python", default=sys.executable)
    p.add_argument("--conductor-python-python", required=True)
    p.add_argument("--out", default=str(HERE / "results"))
    a = p.parse_args()
    quick = a.quick
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]} if len(cpus) > 1 else set()
    client_cpus = set(cpus[1:]) if len(cpus) > 1 else set()
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)  # the orchestrator mostly sleeps; keep it off
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)
    cfg = Config(
        quick=quick,
        reps=a.reps or 3,
        concurrency=a.concurrency,
        poll_interval=a.poll_interval,
        fake_tasks=2000 if quick else 10000,
        idle_seconds=6.0 if quick else 15.0,
        pickup_samples=4 if quick else 15,
        real_workflows=200 if quick else 1000,
        real_tasks_per_workflow=1 if quick else 3,
        modes=tuple(m for m in a.modes.split(",") if m),
        pythons={
            "ours": a.ours_python,
            "raw": a.ours_python,
            "conductor-python": a.conductor_python_python,
        },
        server_cpus=server_cpus,
        client_cpus=client_cpus,
        log_dir=log_dir,
        sdks=tuple(s for s in a.sdks.split(",") if s),
    )
    started = time.time()
    res = Results()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    atexit.register(lambda: [stop_tree(p) for p in list(ACTIVE)])
    run_imports(cfg, res)
    if "fake" in cfg.modes:
        run_fake(cfg, res)
        save(res, cfg, started, out)  # the fake figures survive a failing real phase
    if "real" in cfg.modes:
        run_real(cfg, res)
        save(res, cfg, started, out)


def save(res: Results, cfg: Config, started: float, out: Path) -> None:
    summary = summarise(res, cfg, started)
    (out / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {out / 'latest.json'}")
    import report

    report.write(summary, out)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
