"""Turn the server's OpenAPI document into the one the generator is fed.

`openapi.json` at the repository root is the document exactly as the pinned server serves it
(pretty-printed, keys sorted). The generator never sees it directly: this script rewrites a copy
so that the generated client is what users need. Every rewrite says why. Run by
scripts/codegen.sh; deterministic (same input, same output).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JSON = Any

# Only these server resources are generated. The others (agents, A2A callbacks, model
# providers, UI helpers) are unrelated to running workflows and workers, and the agent API drags
# in Google protobuf descriptors whose recursive schemas make the generator run out of memory.
INCLUDED_TAGS = frozenset(
    {
        "task-resource",
        "workflow-resource",
        "workflow-bulk-resource",
        "metadata-resource",
        "event-resource",
        "health-check-resource",
        "queue-admin-resource",
        "admin-resource",
        "Scheduler",
        "Scheduler Bulk",
        "secret-controller",
        "environment-resource",
    }
)

# Tags become API class names (TaskResourceApi, ...); these read better.
TAG_NAMES = {
    "task-resource": "Task",
    "workflow-resource": "Workflow",
    "workflow-bulk-resource": "WorkflowBulk",
    "metadata-resource": "Metadata",
    "event-resource": "Event",
    "health-check-resource": "Health",
    "queue-admin-resource": "QueueAdmin",
    "admin-resource": "Admin",
    "Scheduler": "Scheduler",
    "Scheduler Bulk": "SchedulerBulk",
    "secret-controller": "Secret",
    "environment-resource": "Environment",
}

# The server's operation ids come from Java method names, de-duplicated with `_1` suffixes.
# These names are the Python methods users call, so each one is chosen here.
OPERATION_IDS = {
    # tasks
    "GET /api/tasks/poll/{tasktype}": "poll",
    "GET /api/tasks/poll/batch/{tasktype}": "batchPoll",
    "POST /api/tasks": "updateTask",
    "POST /api/tasks/update-v2": "updateTaskV2",
    "POST /api/tasks/{workflowId}/{taskRefName}/{status}": "updateTaskByRefName",
    "POST /api/tasks/{workflowId}/{taskRefName}/{status}/sync": "updateTaskByRefNameSync",
    "POST /api/tasks/{workflowId}/{status}/signal": "signalWorkflowTask",
    "POST /api/tasks/{workflowId}/{status}/signal/sync": "signalWorkflowTaskSync",
    "GET /api/tasks/{taskId}": "getTask",
    "GET /api/tasks/{taskId}/log": "getTaskLogs",
    "POST /api/tasks/{taskId}/log": "addTaskLog",
    "GET /api/tasks/queue/size": "getQueueSize",
    "GET /api/tasks/queue/sizes": "getQueueSizes",
    "GET /api/tasks/queue/all": "getAllQueueSizes",
    "GET /api/tasks/queue/all/verbose": "getAllQueueDetails",
    "GET /api/tasks/queue/polldata": "getPollData",
    "GET /api/tasks/queue/polldata/all": "getAllPollData",
    "POST /api/tasks/queue/requeue/{taskType}": "requeuePendingTasks",
    "GET /api/tasks/search": "searchTasks",
    "GET /api/tasks/search-v2": "searchTasksV2",
    "GET /api/tasks/external-storage-location": "getTaskExternalStorageLocation",
    "GET /api/tasks/externalstoragelocation": "getTaskExternalStorageLocationLegacy",
    # workflows
    "POST /api/workflow": "startWorkflow",
    "POST /api/workflow/{name}": "startWorkflowByName",
    "POST /api/workflow/execute/{name}/{version}": "executeWorkflow",
    "GET /api/workflow/{workflowId}": "getWorkflow",
    "DELETE /api/workflow/{workflowId}": "terminateWorkflow",
    "DELETE /api/workflow/{workflowId}/remove": "deleteWorkflow",
    "DELETE /api/workflow/{workflowId}/terminate-remove": "terminateAndDeleteWorkflow",
    "GET /api/workflow/{workflowId}/status": "getWorkflowStatusSummary",
    "GET /api/workflow/{workflowId}/tasks": "getWorkflowTasks",
    "PUT /api/workflow/{workflowId}/pause": "pauseWorkflow",
    "PUT /api/workflow/{workflowId}/resume": "resumeWorkflow",
    "POST /api/workflow/{workflowId}/restart": "restartWorkflow",
    "POST /api/workflow/{workflowId}/retry": "retryWorkflow",
    "POST /api/workflow/{workflowId}/rerun": "rerunWorkflow",
    "POST /api/workflow/{workflowId}/resetcallbacks": "resetWorkflowCallbacks",
    "PUT /api/workflow/{workflowId}/skiptask/{taskReferenceName}": "skipTaskFromWorkflow",
    "PUT /api/workflow/decide/{workflowId}": "decideWorkflow",
    "GET /api/workflow/running/{name}": "getRunningWorkflows",
    "POST /api/workflow/{name}/correlated": "getWorkflowsByCorrelationIds",
    "GET /api/workflow/{name}/correlated/{correlationId}": "getWorkflowsByCorrelationId",
    "GET /api/workflow/search": "searchWorkflows",
    "GET /api/workflow/search-v2": "searchWorkflowsV2",
    "GET /api/workflow/search-by-tasks": "searchWorkflowsByTasks",
    "GET /api/workflow/search-by-tasks-v2": "searchWorkflowsByTasksV2",
    "POST /api/workflow/test": "testWorkflow",
    "GET /api/workflow/external-storage-location": "getWorkflowExternalStorageLocation",
    "GET /api/workflow/externalstoragelocation": "getWorkflowExternalStorageLocationLegacy",
    # bulk
    "PUT /api/workflow/bulk/pause": "pauseWorkflows",
    "PUT /api/workflow/bulk/resume": "resumeWorkflows",
    "POST /api/workflow/bulk/restart": "restartWorkflows",
    "POST /api/workflow/bulk/retry": "retryWorkflows",
    "POST /api/workflow/bulk/terminate": "terminateWorkflows",
    "POST /api/workflow/bulk/search": "searchWorkflowsBulk",
    "DELETE /api/workflow/bulk/remove": "deleteWorkflows",
    "DELETE /api/workflow/bulk/terminate-remove": "terminateAndDeleteWorkflows",
    # metadata
    "GET /api/metadata/taskdefs": "getTaskDefs",
    "POST /api/metadata/taskdefs": "registerTaskDefs",
    "PUT /api/metadata/taskdefs": "updateTaskDef",
    "GET /api/metadata/taskdefs/{tasktype}": "getTaskDef",
    "DELETE /api/metadata/taskdefs/{tasktype}": "unregisterTaskDef",
    "GET /api/metadata/workflow": "getWorkflowDefs",
    "POST /api/metadata/workflow": "registerWorkflowDef",
    "PUT /api/metadata/workflow": "updateWorkflowDefs",
    "GET /api/metadata/workflow/{name}": "getWorkflowDef",
    "GET /api/metadata/workflow/{name}/versions": "getWorkflowDefVersions",
    "DELETE /api/metadata/workflow/{name}/{version}": "unregisterWorkflowDef",
    "GET /api/metadata/workflow/latest-versions": "getLatestWorkflowDefs",
    "GET /api/metadata/workflow/names": "getWorkflowNames",
    "GET /api/metadata/workflow/names-and-versions": "getWorkflowNamesAndVersions",
    "POST /api/metadata/workflow/validate": "validateWorkflowDef",
    # events
    "GET /api/event": "getEventHandlers",
    "POST /api/event": "addEventHandler",
    "PUT /api/event": "updateEventHandler",
    "GET /api/event/{event}": "getEventHandlersForEvent",
    "DELETE /api/event/{name}": "removeEventHandler",
    # health
    "GET /api/health": "health",
    # queue admin
    "GET /api/queue/": "getQueueNames",
    "GET /api/queue/size": "getQueueLengths",
    "POST /api/queue/update/{workflowId}/task/{taskId}/{status}": "updateQueueByTaskId",
    "POST /api/queue/update/{workflowId}/{taskRefName}/{status}": "updateQueueByRefName",
    # admin
    "GET /api/admin/config": "getAllConfig",
    "GET /api/admin/queues": "getEventQueues",
    "GET /api/admin/task/{tasktype}": "getPendingTasks",
    "POST /api/admin/consistency/verifyAndRepair/{workflowId}": "verifyAndRepairWorkflow",
    "POST /api/admin/sweep/requeue/{workflowId}": "requeueSweep",
    # environment
    "GET /api/environment": "getEnvironmentVariables",
    "GET /api/environment/{key}": "getEnvironmentVariable",
}

# Inline enums become named enum classes, so users compare against `TaskResultStatus.COMPLETED`
# instead of strings, and one class serves every place the same set of values appears.
# Keyed by (schema, property) or by the first value tuple seen; the first matching rule wins.
ENUM_NAMES_BY_VALUES = {
    ("IN_PROGRESS", "FAILED", "FAILED_WITH_TERMINAL_ERROR", "COMPLETED", "CANCELED"): (
        "TaskResultStatus"
    ),
    (
        "IN_PROGRESS",
        "CANCELED",
        "FAILED",
        "FAILED_WITH_TERMINAL_ERROR",
        "COMPLETED",
        "COMPLETED_WITH_ERRORS",
        "SCHEDULED",
        "TIMED_OUT",
        "SKIPPED",
    ): "TaskStatus",
    ("RUNNING", "COMPLETED", "FAILED", "TIMED_OUT", "TERMINATED", "PAUSED"): "WorkflowStatus",
    ("FAIL", "RETURN_EXISTING", "FAIL_ON_RUNNING"): "IdempotencyStrategy",
    ("FIXED", "EXPONENTIAL_BACKOFF", "LINEAR_BACKOFF"): "RetryLogic",
    ("RETRY", "TIME_OUT_WF", "ALERT_ONLY"): "TaskTimeoutPolicy",
    ("TIME_OUT_WF", "ALERT_ONLY"): "WorkflowTimeoutPolicy",
    ("TARGET_WORKFLOW", "BLOCKING_WORKFLOW", "BLOCKING_TASK", "BLOCKING_TASK_INPUT"): (
        "SignalReturnStrategy"
    ),
}
ENUM_NAMES_BY_PROPERTY = {
    ("Action", "action"): "EventActionType",
    ("WorkflowTask", "workflowTaskType"): "WorkflowTaskType",
    ("WorkflowTask", "joinMode"): "JoinMode",
    ("RateLimitConfig", "policy"): "RateLimitPolicy",
    ("SchemaDef", "type"): "SchemaType",
    ("WorkflowScheduleExecutionModel", "state"): "ScheduleExecutionState",
}

# Schemas renamed so that an enum can take the natural name.
SCHEMA_RENAMES = {"WorkflowStatus": "WorkflowStatusSummary"}

# Properties that are Java getter artefacts or protobuf internals, not data on the wire.
DROPPED_PROPERTIES = {
    ("TaskResult", "orCreateExecutionMetadata"),
    ("TaskModel", "inputMessage"),
    ("TaskModel", "outputMessage"),
}

REF_PREFIX = "#/components/schemas/"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: preprocess.py IN_SPEC OUT_SPEC", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    out = preprocess(spec)
    Path(argv[2]).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


def preprocess(spec: JSON) -> JSON:
    spec = json.loads(json.dumps(spec))  # private copy
    # No OpenAPI 3.1 construct is used; 3.0 takes the generator's stable code path
    # (its 3.1 support is beta).
    spec["openapi"] = "3.0.3"
    spec["info"] = {
        "title": "Conductor",
        "version": spec.get("x-conductor-server-version", "unknown"),
        "description": "The Conductor server's REST API.",
    }
    _keep_included_paths(spec)
    _rename_operations(spec)
    _base_path_api(spec)
    _empty_batch_poll_is_a_list(spec)
    _task_log_is_plain_text(spec)
    schemas = spec["components"]["schemas"]
    for old, new in SCHEMA_RENAMES.items():
        schemas[new] = schemas.pop(old)
        _replace_refs(spec, REF_PREFIX + old, REF_PREFIX + new)
    for schema_name, prop in DROPPED_PROPERTIES:
        schemas.get(schema_name, {}).get("properties", {}).pop(prop, None)
    _prune_unreferenced_schemas(spec)  # first, so that only enums in use get names
    _name_inline_enums(spec)
    _free_form_maps(spec)
    _prune_unreferenced_schemas(spec)
    return spec


def _operations(spec: JSON) -> Iterator[tuple[str, str, JSON]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "operationId" in op:
                yield method.upper(), path, op


def _keep_included_paths(spec: JSON) -> None:
    for path in list(spec["paths"]):
        item = spec["paths"][path]
        for method in list(item):
            if not set(item[method].get("tags", [])) & INCLUDED_TAGS:
                del item[method]
        if not item:
            del spec["paths"][path]
    for _, _, op in _operations(spec):
        op["tags"] = [TAG_NAMES[t] for t in op["tags"] if t in TAG_NAMES][:1]


def _rename_operations(spec: JSON) -> None:
    unnamed = []
    for method, path, op in _operations(spec):
        key = f"{method} {path}"
        if key in OPERATION_IDS:
            op["operationId"] = OPERATION_IDS[key]
        elif re.search(r"_\d+$", op["operationId"]):
            unnamed.append(key)
    if unnamed:
        # A new server version added an operation whose id would read `foo_1`: name it above.
        raise SystemExit("operations need a name in codegen/preprocess.py: " + ", ".join(unnamed))
    ids = [op["operationId"] for _, _, op in _operations(spec)]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise SystemExit(f"duplicate operation ids: {sorted(duplicates)}")


def _base_path_api(spec: JSON) -> None:
    # Users configure the API base URL (CONDUCTOR_SERVER_URL, e.g. http://localhost:8080/api),
    # as every Conductor SDK does, so paths are relative to /api. The few routes outside /api
    # (/health duplicates /api/health) are dropped.
    spec["servers"] = [{"url": "http://localhost:8080/api"}]
    spec["paths"] = {
        path[len("/api") :]: item
        for path, item in spec["paths"].items()
        if path.startswith("/api/")
    }


def _empty_batch_poll_is_a_list(spec: JSON) -> None:
    # Servers older than 3.21.20 answer an empty batch poll with 204 and no body. Declaring the
    # 204 with the same list type makes the client return [] for it instead of None.
    responses = spec["paths"]["/tasks/poll/batch/{tasktype}"]["get"]["responses"]
    responses["204"] = {
        "description": "No task (older servers)",
        "content": responses["200"]["content"],
    }


def _task_log_is_plain_text(spec: JSON) -> None:
    # The server stores the request body verbatim as the log line (a Spring String body), so a
    # JSON-encoded string would keep its quotes. Send it as text/plain.
    body = spec["paths"]["/tasks/{taskId}/log"]["post"]["requestBody"]
    body["content"] = {"text/plain": body["content"]["application/json"]}


def _walk(node: JSON, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], JSON]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, str(index)))


def _replace_refs(spec: JSON, old: str, new: str) -> None:
    for _, node in _walk(spec):
        if node.get("$ref") == old:
            node["$ref"] = new


def _name_inline_enums(spec: JSON) -> None:
    schemas = spec["components"]["schemas"]
    found: list[tuple[tuple[str, ...], JSON]] = [
        (path, node)
        for path, node in _walk(spec)
        if "enum" in node and node.get("type") == "string"
    ]
    for path, node in found:
        values = tuple(node["enum"])
        name = ENUM_NAMES_BY_VALUES.get(values)
        if name is None and len(path) >= 4 and path[:2] == ("components", "schemas"):
            name = ENUM_NAMES_BY_PROPERTY.get((path[2], path[4] if len(path) > 4 else ""))
        if name is None:
            raise SystemExit(f"an inline enum needs a name in codegen/preprocess.py: {path}")
        existing = schemas.get(name)
        if existing is not None and tuple(existing.get("enum", ())) != values:
            raise SystemExit(f"enum {name} has two different value sets: {path}")
        schemas[name] = {"type": "string", "enum": list(values), "x-conductor-open-enum": True}
        for key in list(node):
            del node[key]
        node["$ref"] = REF_PREFIX + name


def _free_form_maps(spec: JSON) -> None:
    # Jackson describes Map<String, Object> as additionalProperties {type: object}, which the
    # generator turns into Dict[str, object] of dicts. The server accepts and returns any JSON
    # value there (strings, numbers, lists...), so these become Dict[str, Any].
    for _, node in _walk(spec):
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra == {"type": "object"}:
            node["additionalProperties"] = {}
        items = node.get("items")
        if isinstance(items, dict) and items == {"type": "object"}:
            node["items"] = {}


def _prune_unreferenced_schemas(spec: JSON) -> None:
    schemas = spec["components"]["schemas"]

    def refs(node: JSON) -> set[str]:
        return {
            n["$ref"][len(REF_PREFIX) :]
            for _, n in _walk(node)
            if isinstance(n.get("$ref"), str) and n["$ref"].startswith(REF_PREFIX)
        }

    reachable: set[str] = set()
    pending = list(refs(spec["paths"]))
    while pending:
        name = pending.pop()
        if name not in reachable:
            reachable.add(name)
            pending.extend(refs(schemas[name]) - reachable)
    spec["components"]["schemas"] = {k: v for k, v in schemas.items() if k in reachable}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
