# flake8: noqa

__all__ = [
    "AdminApi",
    "EnvironmentApi",
    "EventApi",
    "HealthApi",
    "MetadataApi",
    "QueueAdminApi",
    "SchedulerApi",
    "SchedulerBulkApi",
    "SecretApi",
    "TaskApi",
    "WorkflowApi",
    "WorkflowBulkApi",
]

import typing as _typing

if _typing.TYPE_CHECKING:
    # import apis into api package
    from conductor_client.api.admin_api import AdminApi
    from conductor_client.api.environment_api import EnvironmentApi
    from conductor_client.api.event_api import EventApi
    from conductor_client.api.health_api import HealthApi
    from conductor_client.api.metadata_api import MetadataApi
    from conductor_client.api.queue_admin_api import QueueAdminApi
    from conductor_client.api.scheduler_api import SchedulerApi
    from conductor_client.api.scheduler_bulk_api import SchedulerBulkApi
    from conductor_client.api.secret_api import SecretApi
    from conductor_client.api.task_api import TaskApi
    from conductor_client.api.workflow_api import WorkflowApi
    from conductor_client.api.workflow_bulk_api import WorkflowBulkApi
    
else:
    from importlib import import_module

    _exports = {
        "AdminApi": ".admin_api",
        "EnvironmentApi": ".environment_api",
        "EventApi": ".event_api",
        "HealthApi": ".health_api",
        "MetadataApi": ".metadata_api",
        "QueueAdminApi": ".queue_admin_api",
        "SchedulerApi": ".scheduler_api",
        "SchedulerBulkApi": ".scheduler_bulk_api",
        "SecretApi": ".secret_api",
        "TaskApi": ".task_api",
        "WorkflowApi": ".workflow_api",
        "WorkflowBulkApi": ".workflow_bulk_api",
    }

    def __getattr__(name: str) -> object:
        if (module_name := _exports.get(name)) is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(import_module(module_name, __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(globals().keys() | _exports.keys())
