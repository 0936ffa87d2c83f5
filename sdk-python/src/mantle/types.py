"""Immutable result types returned by the clients, converted from the protobuf messages.

Timestamps are timezone-aware ``datetime`` objects in UTC, or ``None`` when the server
left them unset (e.g. a key that never expires has ``expire_time=None``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from google.protobuf.timestamp_pb2 import Timestamp

from mantle.v1 import (
    common_pb2,
    definition_pb2,
    execution_pb2,
    secret_pb2,
    system_pb2,
    tenant_pb2,
    trigger_pb2,
)

__all__ = [
    "Tenant",
    "ApiKey",
    "CreatedApiKey",
    "Caller",
    "ServerInfo",
    "ValidationProblem",
    "ValidationResult",
    "FieldChange",
    "Change",
    "ChangeKind",
    "Plan",
    "Definition",
    "ApplyResult",
    "DefinitionSummary",
    "DefinitionVersion",
    "ExecutionStatus",
    "StepStatus",
    "EventKind",
    "TERMINAL_STATUSES",
    "Execution",
    "ModelUsage",
    "StepAttempt",
    "ExecutionEvent",
    "Secret",
    "Rotation",
    "Trigger",
    "TriggerFire",
]


def _time(msg: object, name: str) -> datetime | None:
    if not msg.HasField(name):  # type: ignore[attr-defined]
        return None
    ts: Timestamp = getattr(msg, name)
    return ts.ToDatetime(tzinfo=timezone.utc)


def to_timestamp(value: datetime | timedelta) -> Timestamp:
    """Converts an aware ``datetime`` (or a ``timedelta`` from now) to a Timestamp.

    Naive datetimes are rejected because their time zone is ambiguous.
    """
    if isinstance(value, timedelta):
        value = datetime.now(timezone.utc) + value
    if not isinstance(value, datetime):
        raise TypeError(f"expected datetime or timedelta, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime: pass a timezone-aware datetime, e.g. tzinfo=timezone.utc")
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc))
    return ts


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant: an isolated namespace for definitions, executions and secrets."""

    name: str
    """Unique DNS-label name. Immutable."""
    id: str
    """Server-assigned UUID. Immutable."""
    display_name: str
    """Human-readable name; empty when unset."""
    create_time: datetime | None
    update_time: datetime | None
    retention: timedelta | None = None
    """How long the tenant's finished executions are kept, counted from their end (then
    they are deleted); None when the tenant sets none: the installation's default
    (``MANTLE_RETENTION_DAYS``) applies."""

    @classmethod
    def from_proto(cls, msg: tenant_pb2.Tenant) -> Tenant:
        return cls(
            name=msg.name,
            id=msg.id,
            display_name=msg.display_name,
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
            retention=_retention(msg),
        )


def _retention(msg: tenant_pb2.Tenant) -> timedelta | None:
    """A tenant's retention; None when unset or 0 (the installation's default)."""
    if not msg.HasField("settings") or not msg.settings.HasField("retention"):
        return None
    d = msg.settings.retention
    if d.seconds <= 0 and d.nanos <= 0:
        return None
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key, without its token."""

    id: str
    """Identifier; also the visible prefix of the token (``mntl_<id>_<secret>``)."""
    tenant: str
    """Tenant the key acts on; empty for operator keys."""
    name: str
    """Free-form label."""
    scopes: tuple[str, ...]
    create_time: datetime | None
    expire_time: datetime | None
    """When the key stops working; None means never."""
    revoke_time: datetime | None
    """When the key was revoked; None while it is active."""
    last_use_time: datetime | None
    """When the key last authenticated a request (updated at most once a minute)."""

    @property
    def revoked(self) -> bool:
        """True once the key has been revoked."""
        return self.revoke_time is not None

    @property
    def operator(self) -> bool:
        """True for operator keys (keys that belong to no tenant)."""
        return self.tenant == ""

    @classmethod
    def from_proto(cls, msg: tenant_pb2.ApiKey) -> ApiKey:
        return cls(
            id=msg.id,
            tenant=msg.tenant,
            name=msg.name,
            scopes=tuple(msg.scopes),
            create_time=_time(msg, "create_time"),
            expire_time=_time(msg, "expire_time"),
            revoke_time=_time(msg, "revoke_time"),
            last_use_time=_time(msg, "last_use_time"),
        )


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    """A newly created API key and its bearer token.

    The token is shown only here, once: store it now. It is left out of ``repr()`` so it
    does not end up in logs by accident.
    """

    api_key: ApiKey
    token: str = field(repr=False)

    @classmethod
    def from_proto(cls, msg: tenant_pb2.CreateApiKeyResponse) -> CreatedApiKey:
        return cls(api_key=ApiKey.from_proto(msg.api_key), token=msg.token)


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity a request was authenticated as."""

    tenant: str
    """Tenant the request acts on; empty when an operator key names no tenant."""
    scopes: tuple[str, ...]
    operator: bool
    """True for operator keys, which may manage tenants and their API keys."""
    key_id: str
    """API key id, or ``env:MANTLE_API_TOKEN`` / ``file:<name>`` for other tokens."""

    @classmethod
    def from_proto(cls, msg: common_pb2.Caller) -> Caller:
        return cls(
            tenant=msg.tenant,
            scopes=tuple(msg.scopes),
            operator=msg.operator,
            key_id=msg.key_id,
        )


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """The daemon's version, database backend and the caller's identity."""

    version: str
    database: str
    """``sqlite`` or ``postgres``."""
    caller: Caller | None

    @classmethod
    def from_proto(cls, msg: system_pb2.ServerInfo) -> ServerInfo:
        return cls(
            version=msg.version,
            database=msg.database,
            caller=Caller.from_proto(msg.caller) if msg.HasField("caller") else None,
        )


# -- workflow definitions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidationProblem:
    """One problem in a workflow file, as listed by
    :attr:`mantle.errors.InvalidArgument.problems`.

    ``str()`` gives the compiler-style ``FILE:LINE:COL: PATH: message``.
    """

    file: str
    """The file name given with the request (``<input>`` when none was)."""
    line: int
    """1-based line."""
    column: int
    """1-based column."""
    path: str
    """YAML path of the offending element, such as ``steps[1].params.url``; empty for the
    document itself."""
    message: str
    """What is wrong, in plain words."""

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}"
            if self.column:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    @classmethod
    def from_proto(cls, msg: definition_pb2.ValidationProblem) -> ValidationProblem:
        return cls(
            file=msg.file, line=msg.line, column=msg.column, path=msg.path, message=msg.message
        )


ActionKind = Literal["pure", "effect", "timer"]
"""How the engine runs an action: ``pure`` (no I/O, at once), ``effect`` (talks to the
world, under the step's timeout and retry policy) or ``timer`` (a durable wait)."""


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """An action a step may name in ``action:``."""

    name: str
    """Such as ``http/request``."""
    description: str
    kind: str
    """``pure``, ``effect`` or ``timer`` (see :data:`ActionKind`)."""
    credential_types: list[str]
    """The secret types its ``credential:`` may name; empty when it takes none."""
    params_schema: dict[str, Any]
    """JSON Schema (draft 2020-12) of the step's ``params``."""
    output_schema: dict[str, Any]
    """JSON Schema (draft 2020-12) of the step's output (``steps.NAME.output``)."""

    @classmethod
    def from_proto(cls, msg: definition_pb2.ActionInfo) -> ActionInfo:
        def schema(text: str) -> dict[str, Any]:
            value = json.loads(text) if text else {}
            return value if isinstance(value, dict) else {}

        return cls(
            name=msg.name,
            description=msg.description,
            kind=msg.kind,
            credential_types=list(msg.credential_types),
            params_schema=schema(msg.params_schema_json),
            output_schema=schema(msg.output_schema_json),
        )


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """A workflow file that validated."""

    name: str
    """The workflow's name."""
    content_hash: str
    """Hex SHA-256 of the normalized content (formatting and comments do not change it)."""
    step_count: int
    warnings: list[ValidationProblem] = field(default_factory=list)
    """What is valid but will not work as written (a trigger that does not fire yet, an
    undeclared input, a credential naming a missing secret); ordered by position."""

    @classmethod
    def from_proto(cls, msg: definition_pb2.ValidateDefinitionResponse) -> ValidationResult:
        return cls(
            name=msg.name,
            content_hash=msg.content_hash,
            step_count=msg.step_count,
            warnings=[ValidationProblem.from_proto(w) for w in msg.warnings],
        )


@dataclass(frozen=True, slots=True)
class FieldChange:
    """A changed field inside a changed element."""

    path: str
    """Dotted path inside the element, such as ``params.url`` or ``retry.max_attempts``."""
    before: str
    """The stored value as JSON text; ``""`` when the field was added."""
    after: str
    """The new value as JSON text; ``""`` when the field was removed."""

    @classmethod
    def from_proto(cls, msg: definition_pb2.FieldChange) -> FieldChange:
        return cls(path=msg.path, before=msg.before, after=msg.after)


ChangeKind = Literal["added", "removed", "changed", "unspecified"]
"""What happened to an element (``unspecified`` only from a server that did not say)."""

_CHANGE_KINDS: dict[int, ChangeKind] = {
    definition_pb2.Change.ADDED: "added",
    definition_pb2.Change.REMOVED: "removed",
    definition_pb2.Change.CHANGED: "changed",
}


@dataclass(frozen=True, slots=True)
class Change:
    """One added, removed or changed element of a workflow."""

    kind: ChangeKind
    """``"added"``, ``"removed"`` or ``"changed"``."""
    section: str
    """``workflow``, ``input``, ``step``, ``output`` or ``trigger``."""
    name: str
    """The element's name (triggers: ``cron <schedule>`` / ``webhook <path>``; the
    workflow section: the field, such as ``description``)."""
    fields: list[FieldChange]
    """For ``"changed"``: each changed field."""

    @classmethod
    def from_proto(cls, msg: definition_pb2.Change) -> Change:
        return cls(
            kind=_CHANGE_KINDS.get(msg.kind, "unspecified"),
            section=msg.section,
            name=msg.name,
            fields=[FieldChange.from_proto(f) for f in msg.fields],
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """What applying a workflow file would change."""

    name: str
    """The workflow's name."""
    current_version: int
    """The latest stored version; 0 when the workflow does not exist (or was deleted)."""
    changed: bool
    """Whether applying would store a new version."""
    content_hash: str
    """Content hash of the file."""
    changes: list[Change]
    """Ordered by section and name; empty when nothing changed."""
    warnings: list[ValidationProblem] = field(default_factory=list)
    """What is valid but will not work as written (a trigger that does not fire yet, an
    undeclared input, a credential naming a missing secret); ordered by position."""

    @classmethod
    def from_proto(cls, msg: definition_pb2.Plan) -> Plan:
        return cls(
            name=msg.name,
            current_version=msg.current_version,
            changed=msg.changed,
            content_hash=msg.content_hash,
            changes=[Change.from_proto(c) for c in msg.changes],
            warnings=[ValidationProblem.from_proto(w) for w in msg.warnings],
        )


@dataclass(frozen=True, slots=True)
class Definition:
    """One stored version of a workflow."""

    name: str
    version: int
    """From 1, increasing by one per change."""
    content_hash: str
    """Hex SHA-256 of the normalized content."""
    description: str
    source: str = field(repr=False)
    """The YAML text exactly as it was applied."""
    spec: dict[str, Any] = field(repr=False)
    """The normalized definition as the engine reads it (the server's ``spec_json``,
    parsed)."""
    create_time: datetime | None
    """When this version was stored."""

    @classmethod
    def from_proto(cls, msg: definition_pb2.Definition) -> Definition:
        spec = json.loads(msg.spec_json) if msg.spec_json else {}
        return cls(
            name=msg.name,
            version=msg.version,
            content_hash=msg.content_hash,
            description=msg.description,
            source=msg.source,
            spec=spec if isinstance(spec, dict) else {},
            create_time=_time(msg, "create_time"),
        )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of applying a workflow file."""

    definition: Definition
    """The latest version after the call: the new one, or the unchanged latest."""
    created: bool
    """Whether a new version was stored."""
    changes: list[Change]
    """What changed against the previous latest version."""
    warnings: list[ValidationProblem] = field(default_factory=list)
    """What is valid but will not work as written (a trigger that does not fire yet, an
    undeclared input, a credential naming a missing secret); ordered by position."""

    @classmethod
    def from_proto(cls, msg: definition_pb2.ApplyDefinitionResponse) -> ApplyResult:
        return cls(
            definition=Definition.from_proto(msg.definition),
            created=msg.created,
            changes=[Change.from_proto(c) for c in msg.changes],
            warnings=[ValidationProblem.from_proto(w) for w in msg.warnings],
        )


@dataclass(frozen=True, slots=True)
class DefinitionSummary:
    """A workflow in a listing."""

    name: str
    latest_version: int
    description: str
    """The latest version's description."""
    create_time: datetime | None
    """When the first version was stored."""
    update_time: datetime | None
    """When the latest version was stored."""

    @classmethod
    def from_proto(cls, msg: definition_pb2.DefinitionSummary) -> DefinitionSummary:
        return cls(
            name=msg.name,
            latest_version=msg.latest_version,
            description=msg.description,
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
        )


@dataclass(frozen=True, slots=True)
class DefinitionVersion:
    """A stored version in a listing."""

    version: int
    content_hash: str
    create_time: datetime | None

    @classmethod
    def from_proto(cls, msg: definition_pb2.DefinitionVersion) -> DefinitionVersion:
        return cls(
            version=msg.version,
            content_hash=msg.content_hash,
            create_time=_time(msg, "create_time"),
        )


# -- executions ---------------------------------------------------------------------------

ExecutionStatus = Literal[
    "pending", "queued", "running", "completed", "failed", "cancelled", "timed_out", "unspecified"
]
"""An execution's state, lower-case without the ``EXECUTION_STATUS_`` prefix
(``unspecified`` only from a server that did not say)."""

StepStatus = Literal[
    "pending", "running", "completed", "failed", "skipped", "cancelled", "unspecified"
]
"""A step attempt's state, lower-case without the ``STEP_STATUS_`` prefix."""

EventKind = Literal["execution_status", "step_status", "log", "unspecified"]
"""What an :class:`ExecutionEvent` records."""

_EXECUTION_STATUSES: dict[int, ExecutionStatus] = {
    execution_pb2.EXECUTION_STATUS_PENDING: "pending",
    execution_pb2.EXECUTION_STATUS_QUEUED: "queued",
    execution_pb2.EXECUTION_STATUS_RUNNING: "running",
    execution_pb2.EXECUTION_STATUS_COMPLETED: "completed",
    execution_pb2.EXECUTION_STATUS_FAILED: "failed",
    execution_pb2.EXECUTION_STATUS_CANCELLED: "cancelled",
    execution_pb2.EXECUTION_STATUS_TIMED_OUT: "timed_out",
}

_STEP_STATUSES: dict[int, StepStatus] = {
    execution_pb2.STEP_STATUS_PENDING: "pending",
    execution_pb2.STEP_STATUS_RUNNING: "running",
    execution_pb2.STEP_STATUS_COMPLETED: "completed",
    execution_pb2.STEP_STATUS_FAILED: "failed",
    execution_pb2.STEP_STATUS_SKIPPED: "skipped",
    execution_pb2.STEP_STATUS_CANCELLED: "cancelled",
}

_EVENT_KINDS: dict[int, EventKind] = {
    execution_pb2.ExecutionEvent.EXECUTION_STATUS: "execution_status",
    execution_pb2.ExecutionEvent.STEP_STATUS: "step_status",
    execution_pb2.ExecutionEvent.LOG: "log",
}

TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "timed_out"})
"""The states of a finished execution."""


def execution_status_name(value: int) -> ExecutionStatus:
    """The lower-case name of an ``ExecutionStatus`` enum value."""
    return _EXECUTION_STATUSES.get(value, "unspecified")


def step_status_name(value: int) -> StepStatus:
    """The lower-case name of a ``StepStatus`` enum value."""
    return _STEP_STATUSES.get(value, "unspecified")


def execution_status_value(status: str | int) -> int:
    """The ``ExecutionStatus`` enum value of a name such as ``"timed_out"`` (case does not
    matter; ``"EXECUTION_STATUS_TIMED_OUT"`` works too) or of an enum value."""
    if isinstance(status, bool):
        raise TypeError("status: expected a status name such as 'completed'")
    if isinstance(status, int):
        if status not in _EXECUTION_STATUSES:
            raise ValueError(f"status: unknown execution status {status!r}")
        return status
    if not isinstance(status, str):
        raise TypeError(f"status: expected a status name such as 'completed', got {status!r}")
    name = status.strip().lower().replace("-", "_").removeprefix("execution_status_")
    for value, known in _EXECUTION_STATUSES.items():
        if known == name:
            return value
    choices = ", ".join(_EXECUTION_STATUSES.values())
    raise ValueError(f"status: unknown execution status {status!r}; expected one of {choices}")


def _json(text: str) -> Any:
    """A JSON field: parsed, None when empty, the text itself when it is not JSON."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class Execution:
    """A run of a workflow version."""

    id: str
    """Server-assigned UUID; newer executions sort later."""
    workflow: str
    """The workflow's name."""
    version: int
    """The workflow version it runs; fixed for its whole life."""
    status: ExecutionStatus
    """``pending``, ``queued``, ``running``, ``completed``, ``failed``, ``cancelled`` or
    ``timed_out``."""
    inputs: dict[str, Any] | None
    """The inputs after defaults were applied; None when the server left them out (a
    ``list_executions``/``iter_executions`` result with ``view="basic"``, the default)."""
    outputs: dict[str, Any] | None
    """The workflow's outputs once completed; None before, and None when the server left
    them out (``view="basic"`` listings)."""
    error: str
    """Why it failed, was cancelled or timed out; empty otherwise."""
    create_time: datetime | None
    """When it was started."""
    start_time: datetime | None
    """When its first step started."""
    end_time: datetime | None
    """When it finished."""
    trigger: dict[str, Any] | None
    """What started it, such as ``{"type": "api"}``; None when the server left it out
    (``view="basic"`` listings)."""
    model_usage: ModelUsage | None = None
    """What its ``ai/completion`` steps used so far; set by ``get_execution`` when there
    was a model call, None otherwise and in listings."""

    @property
    def finished(self) -> bool:
        """True once the execution has completed, failed, been cancelled or timed out."""
        return self.status in TERMINAL_STATUSES

    @property
    def duration(self) -> timedelta | None:
        """From the first step's start (else the creation) to the end; None until it
        finished."""
        start = self.start_time or self.create_time
        if start is None or self.end_time is None:
            return None
        return self.end_time - start

    @classmethod
    def from_proto(cls, msg: execution_pb2.Execution) -> Execution:
        """Converts the protobuf message. ``inputs``, ``outputs`` and ``trigger`` are None
        when their JSON field is empty (as in a BASIC listing, which leaves them out) or
        not a JSON object; they are never invented as ``{}``."""
        inputs = _json(msg.inputs_json)
        outputs = _json(msg.outputs_json)
        trigger = _json(msg.trigger_json)
        return cls(
            id=msg.id,
            workflow=msg.workflow,
            version=msg.version,
            status=execution_status_name(msg.status),
            inputs=inputs if isinstance(inputs, dict) else None,
            outputs=outputs if isinstance(outputs, dict) else None,
            error=msg.error,
            create_time=_time(msg, "create_time"),
            start_time=_time(msg, "start_time"),
            end_time=_time(msg, "end_time"),
            trigger=trigger if isinstance(trigger, dict) else None,
            model_usage=ModelUsage.from_proto(msg.model_usage)
            if msg.HasField("model_usage")
            else None,
        )


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Tokens and cost of model calls."""

    input_tokens: int
    output_tokens: int
    cost_usd: float
    """In US dollars, by the daemon's price table (models without a price count 0)."""

    @property
    def total_tokens(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_proto(cls, msg: execution_pb2.ModelUsage) -> ModelUsage:
        """Converts the protobuf message."""
        return cls(
            input_tokens=msg.input_tokens,
            output_tokens=msg.output_tokens,
            cost_usd=msg.cost_usd,
        )


@dataclass(frozen=True, slots=True)
class StepAttempt:
    """One attempt of one step of an execution."""

    step_name: str
    attempt: int
    """From 1."""
    status: StepStatus
    """``pending`` (a retry waiting for ``wake_time``), ``running``, ``completed``,
    ``failed``, ``skipped`` or ``cancelled``."""
    output: Any
    """The checkpointed output (parsed JSON) once completed; None before, and None when
    the server left it out (``list_step_attempts(..., view="basic")``)."""
    error: str
    """Why it failed or was cancelled; empty otherwise."""
    start_time: datetime | None
    end_time: datetime | None
    wake_time: datetime | None
    """For a pending retry, when it starts; for a running ``core/sleep``, when it ends."""

    @classmethod
    def from_proto(cls, msg: execution_pb2.StepAttempt) -> StepAttempt:
        return cls(
            step_name=msg.step_name,
            attempt=msg.attempt,
            status=step_status_name(msg.status),
            output=_json(msg.output_json),
            error=msg.error,
            start_time=_time(msg, "start_time"),
            end_time=_time(msg, "end_time"),
            wake_time=_time(msg, "wake_time"),
        )


@dataclass(frozen=True, slots=True)
class ExecutionEvent:
    """One entry of an execution's event log, as yielded by ``watch``."""

    seq: int
    """Position in the log, from 1; pass it as ``after_seq`` to resume a watch."""
    time: datetime | None
    kind: EventKind
    """``execution_status``, ``step_status`` or ``log``."""
    execution_status: ExecutionStatus | None
    """The execution's new state, for ``execution_status`` events; None otherwise."""
    step_name: str
    """The step, for ``step_status`` and ``log`` events; empty otherwise."""
    attempt: int
    """The attempt, for ``step_status`` and ``log`` events; 0 otherwise."""
    step_status: StepStatus | None
    """The attempt's new state, for ``step_status`` events; None otherwise."""
    message: str
    """An error, a log line or a retry time; may be empty."""

    @property
    def terminal(self) -> bool:
        """True for the event that finishes the execution."""
        return self.kind == "execution_status" and self.execution_status in TERMINAL_STATUSES

    @classmethod
    def from_proto(cls, msg: execution_pb2.ExecutionEvent) -> ExecutionEvent:
        kind = _EVENT_KINDS.get(msg.kind, "unspecified")
        return cls(
            seq=msg.seq,
            time=_time(msg, "time"),
            kind=kind,
            execution_status=(
                execution_status_name(msg.execution_status) if kind == "execution_status" else None
            ),
            step_name=msg.step_name,
            attempt=msg.attempt,
            step_status=step_status_name(msg.step_status) if kind == "step_status" else None,
            message=msg.message,
        )


# -- secrets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret's metadata. The API never returns a secret's values: they go in with
    ``create_secret``/``update_secret`` and reach only the steps that name the secret."""

    name: str
    """Name within the tenant. Immutable."""
    type: str
    """``generic``, ``bearer``, ``basic``, ``header``, ``openai``, ``anthropic`` or
    ``postgres``. Immutable."""
    field_names: tuple[str, ...]
    """The names of its fields, sorted."""
    key_id: str
    """Id of the encryption key its values are sealed with."""
    create_time: datetime | None
    update_time: datetime | None
    """When its values last changed."""

    @classmethod
    def from_proto(cls, msg: secret_pb2.Secret) -> Secret:
        return cls(
            name=msg.name,
            type=msg.type,
            field_names=tuple(msg.field_names),
            key_id=msg.key_id,
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
        )


@dataclass(frozen=True, slots=True)
class Rotation:
    """What ``rotate_encryption_key`` did."""

    key_id: str
    """Id of the key every secret is now sealed with."""
    rotated: int
    """How many secrets this call re-encrypted."""
    remaining: int
    """How many secrets remain sealed with another key (0 when the rotation is done)."""

    @classmethod
    def from_proto(cls, msg: secret_pb2.RotateEncryptionKeyResponse) -> Rotation:
        return cls(key_id=msg.key_id, rotated=msg.rotated, remaining=msg.remaining)


# -- triggers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerFire:
    """What the last fire of a trigger did."""

    scheduled_time: datetime | None
    """When it was due (cron), or when it was received (webhook) or asked for
    (``fire_trigger``)."""
    fire_time: datetime | None
    """When it fired."""
    execution_id: str | None
    """The execution it started; None when it started none."""
    result: str
    """``"started"``, or ``"not started: "`` and why (the refusal's message)."""

    @property
    def started(self) -> bool:
        """True when the fire started an execution."""
        return self.execution_id is not None

    @classmethod
    def from_proto(cls, msg: trigger_pb2.TriggerFire) -> TriggerFire:
        return cls(
            scheduled_time=_time(msg, "scheduled_time"),
            fire_time=_time(msg, "fire_time"),
            execution_id=msg.execution_id or None,
            result=msg.result,
        )


@dataclass(frozen=True, slots=True)
class Trigger:
    """A trigger a workflow file declares (``triggers:``), registered when the file was
    applied: a ``cron`` schedule or a ``webhook`` path that starts executions of the
    workflow. The fields of the other type are empty."""

    id: str
    """Server-assigned UUID; what ``pause_trigger``, ``resume_trigger`` and
    ``fire_trigger`` take."""
    workflow: str
    """The workflow it starts."""
    type: str
    """``cron``, ``webhook`` or ``email``."""
    key: str
    """Its identity within the workflow: ``cron <schedule>``, ``webhook <path>`` or
    ``email <mailbox>/<folder>``."""
    schedule: str
    """Cron: the schedule, such as ``0 8 * * 1-5``; empty for webhooks."""
    timezone: str
    """Cron: the IANA time zone the schedule is read in (``UTC`` unless the file names
    one); empty for webhooks."""
    catchup: str
    """Cron: which times missed while no daemon ran fire afterwards: ``none``, ``latest``
    or ``all``; empty for webhooks."""
    path: str
    """Webhook: the path its POSTs go to; empty for cron triggers."""
    secret_name: str
    """Webhook: the name of the secret that signs its POSTs (never the key itself); empty
    when none is named."""
    inputs: dict[str, Any]
    """Cron: the inputs of the executions it starts; empty when none."""
    version: int
    """The workflow version whose apply registered it or last changed it."""
    paused: bool
    """True while paused (``pause_trigger``)."""
    next_fire_time: datetime | None
    """Cron: when it fires next; None while paused, and for webhooks."""
    last_fire: TriggerFire | None
    """What its last fire did; None when it never fired."""
    create_time: datetime | None
    """When it was registered."""
    update_time: datetime | None
    """When it last changed."""
    mailbox: str = ""
    """Email: the name of the ``imap`` secret of the mailbox; empty for other triggers."""
    folder: str = ""
    """Email: the folder read (``INBOX`` by default)."""
    filter: str = ""
    """Email: which new messages start executions: ``unseen``, ``all``, ``flagged`` or
    ``recent``."""
    poll_interval: str = ""
    """Email: how often the folder is read, such as ``60s``."""
    pinned_version: int = 0
    """The version it starts when the file pins one (``version:``); 0 for the latest."""

    @classmethod
    def from_proto(cls, msg: trigger_pb2.Trigger) -> Trigger:
        inputs = _json(msg.inputs_json)
        return cls(
            id=msg.id,
            workflow=msg.workflow,
            type=msg.type,
            key=msg.key,
            schedule=msg.schedule,
            timezone=msg.timezone,
            catchup=msg.catchup,
            path=msg.path,
            secret_name=msg.secret_name,
            inputs=inputs if isinstance(inputs, dict) else {},
            version=msg.version,
            paused=msg.paused,
            next_fire_time=_time(msg, "next_fire_time"),
            last_fire=TriggerFire.from_proto(msg.last_fire) if msg.HasField("last_fire") else None,
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
            mailbox=msg.mailbox,
            folder=msg.folder,
            filter=msg.filter,
            poll_interval=msg.poll_interval,
            pinned_version=msg.pinned_version,
        )
