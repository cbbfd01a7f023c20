"""A minimal, fast FAKE Conductor server for client benchmarks (loopback only).

It answers only what a worker needs, as cheaply as plain asyncio allows, so that the figures
measured on the client side are the client's own cost:

    GET  /api/tasks/poll/batch/{type}?count&timeout   tasks (JSON list), long poll honoured
    POST /api/tasks                                    update: text/plain task id
    POST /api/tasks/update-v2                          update: the next task of the type or 204

Control endpoints for the benchmark driver (not part of Conductor):

    POST /ctl/load?types=A,B&n=N[&timed=1]  enqueue N tasks per type (~1 KB JSON each)
    GET  /ctl/stats                        counters as JSON
    POST /ctl/reset                        forget all tasks and counters

Usage: python fake_server.py [--port 0]   prints "READY <port>" on stdout when listening.
This is NOT Conductor: no workflows, no persistence, no validation beyond finding the task id.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import sys
import time
import uuid
from urllib.parse import parse_qs, unquote

TASK_ID_RE = re.compile(rb'"taskId"\s*:\s*"([^"]+)"')
STATUS_RE = re.compile(rb'"status"\s*:\s*"([A-Z_]+)"')

# About 1 KB: the fields a real server sends for a SIMPLE task in a small workflow.
TEMPLATE = {
    "taskType": None,
    "status": "IN_PROGRESS",
    "inputData": {
        "orderId": "ord-000000000",
        "customer": {"id": "cust-12345", "name": "Jane Example", "tier": "gold"},
        "items": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-2", "qty": 1}],
        "amount": 129.95,
        "currency": "EUR",
    },
    "referenceTaskName": None,
    "retryCount": 0,
    "seq": 1,
    "pollCount": 1,
    "taskDefName": None,
    "scheduledTime": 1767225600000,
    "startTime": 1767225600010,
    "endTime": 0,
    "updateTime": 1767225600010,
    "startDelayInSeconds": 0,
    "retried": False,
    "executed": False,
    "callbackFromWorker": True,
    "responseTimeoutSeconds": 0,
    "workflowInstanceId": None,
    "workflowType": "bench_workflow",
    "taskId": None,
    "callbackAfterSeconds": 0,
    "workerId": "bench",
    "outputData": {},
    "workflowTask": {
        "name": None,
        "taskReferenceName": None,
        "inputParameters": {"orderId": "${workflow.input.orderId}"},
        "type": "SIMPLE",
        "startDelay": 0,
        "optional": False,
        "asyncComplete": False,
        "permissive": False,
    },
    "rateLimitPerFrequency": 0,
    "rateLimitFrequencyInSeconds": 0,
    "workflowPriority": 0,
    "iteration": 0,
    "subworkflowChanged": False,
    "queueWaitTime": 10,
    "firstStartTime": 0,
    "loopOverTask": False,
    "taskDefinition": None,
}


def task_json(task_type: str, task_id: str, workflow_id: str) -> bytes:
    t = dict(TEMPLATE)
    t["taskType"] = t["taskDefName"] = task_type
    t["referenceTaskName"] = task_type + "_ref"
    t["workflowInstanceId"] = workflow_id
    t["taskId"] = task_id
    t["workflowTask"] = dict(
        TEMPLATE["workflowTask"], name=task_type, taskReferenceName=task_type + "_ref"
    )
    t = {k: v for k, v in t.items() if v is not None}
    return json.dumps(t, separators=(",", ":")).encode()


class State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.queues: dict[str, collections.deque[tuple[str, bytes, float, bool]]] = (
            collections.defaultdict(collections.deque)
        )
        self.waiters: dict[str, collections.deque[tuple[asyncio.Future, int]]] = (
            collections.defaultdict(collections.deque)
        )
        self.handed: dict[str, tuple[str, float, bool]] = {}  # id -> (type, enqueued, timed)
        self.requests = 0
        self.requests_by_kind: collections.Counter[str] = collections.Counter()
        self.polls_by_type: collections.Counter[str] = collections.Counter()
        self.first_poll: dict[str, float] = {}
        self.last_poll: dict[str, float] = {}
        self.completed = 0
        self.unknown_updates = 0
        self.handed_out = 0
        self.last_complete = 0.0
        self.first_handout = 0.0
        self.pickup: list[float] = []
        self.pickup_to_done: list[float] = []
        self.seq = 0

    def load(self, task_types: list[str], n: int, timed: bool) -> float:
        """Build every task first, then enqueue them all at one instant and wake the polls."""
        built = []
        for task_type in task_types:
            for _ in range(n):
                self.seq += 1
                tid = str(uuid.uuid4())
                built.append((task_type, tid, task_json(task_type, tid, f"wf-{self.seq:010d}")))
        now = time.time()
        for task_type, tid, body in built:
            self.queues[task_type].append((tid, body, now, timed))
        for task_type in task_types:
            self.wake(task_type)
        return now

    def take(self, task_type: str, count: int) -> list[bytes]:
        q = self.queues.get(task_type)
        out: list[bytes] = []
        if not q:
            return out
        now = time.time()
        if not self.first_handout:
            self.first_handout = now
        while q and len(out) < count:
            tid, body, enq, timed = q.popleft()
            self.handed[tid] = (task_type, enq, timed)
            if timed:
                self.pickup.append(now - enq)
            out.append(body)
        self.handed_out += len(out)
        return out

    def wake(self, task_type: str) -> None:
        waiters = self.waiters.get(task_type)
        while waiters and self.queues[task_type]:
            fut, count = waiters.popleft()
            if not fut.done():
                fut.set_result(self.take(task_type, count))

    def complete(self, body: bytes) -> str | None:
        m = TASK_ID_RE.search(body)
        if m is None:
            self.unknown_updates += 1
            return None
        tid = m.group(1).decode()
        s = STATUS_RE.search(body)
        entry = self.handed.get(tid)
        if entry is None:
            self.unknown_updates += 1
            return None
        if s is not None and s.group(1) == b"IN_PROGRESS":
            return entry[0]
        del self.handed[tid]
        now = time.time()
        self.completed += 1
        self.last_complete = now
        if entry[2]:
            self.pickup_to_done.append(now - entry[1])
        return entry[0]

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "requests_by_kind": dict(self.requests_by_kind),
            "polls_by_type": dict(self.polls_by_type),
            "first_poll": self.first_poll,
            "last_poll": self.last_poll,
            "completed": self.completed,
            "handed_out": self.handed_out,
            "unknown_updates": self.unknown_updates,
            "queued": sum(len(q) for q in self.queues.values()),
            "first_handout": self.first_handout,
            "last_complete": self.last_complete,
            "pickup": self.pickup,
            "pickup_to_done": self.pickup_to_done,
            "now": time.time(),
        }


STATE = State()
REASONS = {200: b"OK", 204: b"No Content", 400: b"Bad Request", 404: b"Not Found"}


class HttpProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            close = False
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value.strip())
                elif lname == b"connection" and value.strip().lower() == b"close":
                    close = True
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            method, target, _ = lines[0].split(b" ", 2)
            self.handle(method.decode(), target.decode(), body, close)

    def send(
        self,
        status: int,
        body: bytes = b"",
        ctype: bytes = b"application/json",
        close: bool = False,
    ) -> None:
        if self.transport.is_closing():
            return
        head = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n" % (
            status,
            REASONS.get(status, b"X"),
            len(body),
        )
        if body:
            head += b"Content-Type: " + ctype + b"\r\n"
        if close:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + body)
        if close:
            self.transport.close()

    def handle(self, method: str, target: str, body: bytes, close: bool) -> None:
        st = STATE
        path, _, query = target.partition("?")
        if not path.startswith("/ctl/"):
            st.requests += 1
        if path.startswith("/api/tasks/poll/batch/") and method == "GET":
            task_type = unquote(path[len("/api/tasks/poll/batch/") :])
            st.requests_by_kind["poll"] += 1
            st.polls_by_type[task_type] += 1
            now = time.time()
            st.first_poll.setdefault(task_type, now)
            st.last_poll[task_type] = now
            q = parse_qs(query)
            count = int(q.get("count", ["1"])[0])
            timeout_ms = int(q.get("timeout", ["100"])[0])
            tasks = st.take(task_type, count)
            if tasks or timeout_ms <= 0:
                self.send(200, b"[" + b",".join(tasks) + b"]", close=close)
                return
            fut = asyncio.get_running_loop().create_future()
            st.waiters[task_type].append((fut, count))
            handle = asyncio.get_running_loop().call_later(
                timeout_ms / 1000.0, lambda: fut.done() or fut.set_result([])
            )
            fut.add_done_callback(
                lambda f: (
                    handle.cancel(),
                    self.send(200, b"[" + b",".join(f.result()) + b"]", close=close),
                )
            )
            return
        if path == "/api/tasks/update-v2" and method == "POST":
            st.requests_by_kind["update_v2"] += 1
            task_type = st.complete(body)
            nxt = st.take(task_type, 1) if task_type else []
            if nxt:
                self.send(200, nxt[0], close=close)
            else:
                self.send(204, close=close)
            return
        if path == "/api/tasks" and method == "POST":
            st.requests_by_kind["update"] += 1
            m = TASK_ID_RE.search(body)
            st.complete(body)
            self.send(200, m.group(1) if m else b"", b"text/plain", close=close)
            return
        if path == "/ctl/load":
            q = parse_qs(query)
            t = st.load(
                q["types"][0].split(","), int(q.get("n", ["1"])[0]), q.get("timed", ["0"])[0] == "1"
            )
            self.send(200, json.dumps({"loaded_at": t}).encode(), close=close)
            return
        if path == "/ctl/stats":
            self.send(200, json.dumps(st.stats()).encode(), close=close)
            return
        if path == "/ctl/reset":
            st.reset()
            self.send(200, b"{}", close=close)
            return
        st.requests_by_kind["other " + method + " " + path.split("?")[0][:60]] += 1
        self.send(404, b'{"status":404,"message":"not in the fake server"}', close=close)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpProtocol, "127.0.0.1", args.port, backlog=512)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
