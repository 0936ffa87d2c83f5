"""Pieces shared by :mod:`mantle.client` and :mod:`mantle.aio`: the retry policy, channel
settings and request construction. Nothing here does I/O."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc

from mantle import _config
from mantle.types import execution_status_value, to_timestamp
from mantle.v1 import common_pb2, definition_pb2, execution_pb2, secret_pb2, tenant_pb2

_SourceRequest = TypeVar(
    "_SourceRequest",
    definition_pb2.ValidateDefinitionRequest,
    definition_pb2.PlanDefinitionRequest,
    definition_pb2.ApplyDefinitionRequest,
)

MAX_ATTEMPTS = 3
"""At most this many attempts per call (the first one plus two retries)."""
BACKOFF_BASE = 0.1
"""Seconds to wait before the first retry; doubled for the next one, plus up to 25% jitter."""


def should_retry(code: grpc.StatusCode | None, *, read: bool, attempt: int) -> bool:
    """Whether a call that failed with ``code`` on attempt number ``attempt`` (1-based)
    is tried again: only ``UNAVAILABLE``, and ``DEADLINE_EXCEEDED`` for read-only calls,
    and never beyond :data:`MAX_ATTEMPTS` attempts."""
    if attempt >= MAX_ATTEMPTS:
        return False
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    return read and code == grpc.StatusCode.DEADLINE_EXCEEDED


def backoff_delay(attempt: int) -> float:
    """Seconds to sleep after failed attempt ``attempt`` (1-based): 0.1 s, then 0.2 s,
    each with up to 25% random jitter."""
    base = BACKOFF_BASE * (2 ** (attempt - 1))
    return float(base + random.uniform(0, base / 4))


def check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout: must be a positive number of seconds or None, got {timeout!r}")
    return float(timeout)


class Settings:
    """Resolved connection settings of a client."""

    __slots__ = ("address", "token", "tenant", "timeout", "metadata")

    def __init__(
        self, address: str, token: str | None, tenant: str | None, timeout: float | None
    ) -> None:
        self.address = _config.parse_address(address)
        self.token = _config.resolve_token(token, self.address)
        self.tenant = tenant or None
        self.timeout = check_timeout(timeout)
        self.metadata = _config.call_metadata(self.token, self.tenant)

    def credentials(self) -> grpc.ChannelCredentials | None:
        return grpc.ssl_channel_credentials() if self.address.tls else None


def create_tenant_request(name: str, display_name: str | None) -> tenant_pb2.CreateTenantRequest:
    return tenant_pb2.CreateTenantRequest(name=name, display_name=display_name or "")


def update_tenant_request(name: str, display_name: str | None) -> tenant_pb2.UpdateTenantRequest:
    req = tenant_pb2.UpdateTenantRequest(name=name)
    if display_name is not None:
        req.display_name = display_name
    return req


def check_page_size(page_size: int) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 0:
        raise ValueError(f"page_size: must be a non-negative integer, got {page_size!r}")
    return page_size


def create_api_key_request(
    tenant: str,
    scopes: Iterable[str],
    name: str | None,
    expire_time: datetime | timedelta | None,
) -> tenant_pb2.CreateApiKeyRequest:
    if isinstance(scopes, str):
        # A lone string would otherwise be split into characters.
        scopes = [scopes]
    req = tenant_pb2.CreateApiKeyRequest(tenant=tenant, name=name or "", scopes=list(scopes))
    if expire_time is not None:
        req.expire_time.CopyFrom(to_timestamp(expire_time))
    return req


def source_request(
    cls: type[_SourceRequest], source: str, filename: str | None
) -> _SourceRequest:
    """A Validate/Plan/ApplyDefinitionRequest for a workflow file's text."""
    if not isinstance(source, str):
        raise TypeError(f"source: expected the YAML text as str, got {type(source).__name__}")
    return cls(source=source, filename=filename or "")


def read_source_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Reads a workflow file as UTF-8; returns its text and its name (the path as given),
    which the server uses in problem reports."""
    filename = os.fsdecode(path)
    with open(path, encoding="utf-8") as f:
        return f.read(), filename


_VIEWS: dict[str, common_pb2.View.ValueType] = {
    "basic": common_pb2.VIEW_BASIC,
    "full": common_pb2.VIEW_FULL,
}


def view_value(view: str, name: str = "view") -> common_pb2.View.ValueType:
    """The ``View`` enum value of ``"basic"`` or ``"full"`` (case does not matter). Anything
    else raises ValueError naming the argument ``name``."""
    value = _VIEWS.get(view.lower()) if isinstance(view, str) else None
    if value is None:
        raise ValueError(f"{name}: must be 'basic' or 'full', got {view!r}")
    return value


def check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version: must be a non-negative integer (0: latest), got {version!r}")
    return version


# -- executions ---------------------------------------------------------------------------

WATCH_WINDOW = 60.0
"""``wait`` re-checks the execution with GetExecution at least this often (seconds), so a
connection that died silently cannot make it hang."""

TRANSIENT_WATCH_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Watch failures that ``wait`` answers by polling and watching again; anything else
(NOT_FOUND, PERMISSION_DENIED, ...) is raised."""


def rewatch_delay(drops: int) -> float:
    """Seconds to pause before watching again after the stream dropped ``drops`` times in a
    row: 0.25 s doubling up to 5 s."""
    return float(min(0.25 * (2 ** min(max(drops - 1, 0), 5)), 5.0))


def start_execution_request(
    workflow: str,
    inputs: Mapping[str, Any] | None,
    version: int,
    idempotency_key: str | None = None,
) -> execution_pb2.StartExecutionRequest:
    if inputs is None:
        inputs_json = ""
    elif not isinstance(inputs, Mapping):
        raise TypeError(f"inputs: expected a dict of input names to values, got {type(inputs).__name__}")
    elif not inputs:
        inputs_json = ""
    else:
        try:
            inputs_json = json.dumps(dict(inputs), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"inputs: not JSON-serializable: {e}") from e
    return execution_pb2.StartExecutionRequest(
        workflow=workflow,
        version=check_version(version),
        inputs_json=inputs_json,
        idempotency_key=idempotency_key or "",
    )


def list_executions_request(
    workflow: str | None,
    status: str | int | None,
    created_after: datetime | None,
    created_before: datetime | None,
    page_size: int,
    page_token: str,
    view: str = "basic",
) -> execution_pb2.ListExecutionsRequest:
    req = execution_pb2.ListExecutionsRequest(
        workflow=workflow or "",
        status=execution_pb2.ExecutionStatus.ValueType(
            execution_status_value(status) if status is not None else 0
        ),
        page_size=check_page_size(page_size),
        page_token=page_token,
        view=view_value(view),
    )
    if created_after is not None:
        req.created_after.CopyFrom(to_timestamp(created_after))
    if created_before is not None:
        req.created_before.CopyFrom(to_timestamp(created_before))
    return req


STEP_ATTEMPTS_PAGE_SIZE = 1000
"""Attempts per ListStepAttempts request: the server's maximum. A page may still end early
(the server caps a page at 3 MiB), so ``list_step_attempts`` follows ``next_page_token``."""


def list_step_attempts_request(
    id: str, page_token: str, view: str = "full"
) -> execution_pb2.ListStepAttemptsRequest:
    return execution_pb2.ListStepAttemptsRequest(
        id=id,
        page_size=STEP_ATTEMPTS_PAGE_SIZE,
        page_token=page_token,
        view=view_value(view),
    )


def watch_request(id: str, after_seq: int) -> execution_pb2.WatchExecutionRequest:
    if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
        raise ValueError(f"after_seq: must be a non-negative integer, got {after_seq!r}")
    return execution_pb2.WatchExecutionRequest(id=id, after_seq=after_seq)


def is_terminal_event(msg: execution_pb2.ExecutionEvent) -> bool:
    return msg.kind == execution_pb2.ExecutionEvent.EXECUTION_STATUS and msg.execution_status in (
        execution_pb2.EXECUTION_STATUS_COMPLETED,
        execution_pb2.EXECUTION_STATUS_FAILED,
        execution_pb2.EXECUTION_STATUS_CANCELLED,
        execution_pb2.EXECUTION_STATUS_TIMED_OUT,
    )


def wait_timeout_error(id: str, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"execution {id} did not finish within {timeout} s")


# -- secrets ------------------------------------------------------------------------------


def secret_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """Checks a secret's fields locally: a mapping of names to strings. Errors name the
    field, never its value."""
    if not isinstance(fields, Mapping):
        raise TypeError(
            f"fields: expected a dict of field names to string values, got {type(fields).__name__}"
        )
    out: dict[str, str] = {}
    for key, value in fields.items():
        if not isinstance(key, str):
            raise TypeError(f"fields: field names must be str, got {type(key).__name__}")
        if not isinstance(value, str):
            # The value itself is never shown: it may be the secret.
            raise TypeError(f"fields.{key}: expected a str value, got {type(value).__name__}")
        out[key] = value
    return out


def create_secret_request(
    name: str, type: str, fields: Mapping[str, str]
) -> secret_pb2.CreateSecretRequest:
    return secret_pb2.CreateSecretRequest(name=name, type=type, fields=secret_fields(fields))


def update_secret_request(name: str, fields: Mapping[str, str]) -> secret_pb2.UpdateSecretRequest:
    return secret_pb2.UpdateSecretRequest(name=name, fields=secret_fields(fields))


def rotate_request(batch_size: int) -> secret_pb2.RotateEncryptionKeyRequest:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 0 <= batch_size <= 2**31 - 1
    ):
        raise ValueError(
            f"batch_size: must be a non-negative integer (0: the server default), got {batch_size!r}"
        )
    return secret_pb2.RotateEncryptionKeyRequest(batch_size=batch_size)
