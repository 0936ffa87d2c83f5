"""Python SDK of Mantle, a durable workflow engine.

Quickstart::

    import mantle

    with mantle.Client("127.0.0.1:8080") as client:
        print(client.server_info())
        tenant = client.create_tenant("acme", display_name="ACME Corp")
        result = client.apply_file("hello.yaml")  # a workflow definition
        execution = client.start_execution("hello", {"who": "Ada"})
        print(client.wait(execution.id).outputs)

:class:`Client` is synchronous; :class:`mantle.aio.Client` offers the same methods as
coroutines. Errors are :class:`mantle.errors.MantleError` subclasses.
"""

from mantle import errors
from mantle._config import Address, is_local_host, parse_address
from mantle._version import __version__
from mantle.client import Client
from mantle.errors import MantleError
from mantle.types import (
    ActionInfo,
    ApiKey,
    ApplyResult,
    Caller,
    Change,
    CreatedApiKey,
    Definition,
    DefinitionSummary,
    DefinitionVersion,
    Execution,
    ModelUsage,
    ExecutionEvent,
    FieldChange,
    Plan,
    Rotation,
    Secret,
    ServerInfo,
    StepAttempt,
    Tenant,
    Trigger,
    TriggerFire,
    ValidationProblem,
    ValidationResult,
)

__all__ = [
    "ActionInfo",
    "Address",
    "ApiKey",
    "ApplyResult",
    "Caller",
    "Change",
    "Client",
    "CreatedApiKey",
    "Definition",
    "DefinitionSummary",
    "DefinitionVersion",
    "Execution",
    "ModelUsage",
    "ExecutionEvent",
    "FieldChange",
    "MantleError",
    "Plan",
    "Rotation",
    "Secret",
    "ServerInfo",
    "StepAttempt",
    "Tenant",
    "Trigger",
    "TriggerFire",
    "ValidationProblem",
    "ValidationResult",
    "__version__",
    "errors",
    "is_local_host",
    "parse_address",
]
