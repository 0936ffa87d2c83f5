"""Pieces shared by :mod:`mantle.client` and :mod:`mantle.aio`: the retry policy, channel
settings, request construction, and the bookkeeping of following an execution
(:class:`Follower`). Nothing here does network I/O."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from mantle import _config, errors
from mantle.types import Execution, execution_status_value, to_timestamp
from mantle.v1 import (
    common_pb2,
    definition_pb2,
    execution_pb2,
    secret_pb2,
    tenant_pb2,
    trigger_pb2,
)

_TriggerRequest = TypeVar(
    "_TriggerRequest",
    trigger_pb2.PauseTriggerRequest,
    trigger_pb2.ResumeTriggerRequest,
    trigger_pb2.FireTriggerRequest,
)

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


logger = logging.getLogger("mantle")
"""The SDK's logger. ``wait`` and ``follow`` report on it when the daemon becomes
unreachable (WARNING) and reachable again (INFO)."""

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # gRPC backs off reconnecting up to 120 s by default: a daemon back from a restart
    # would go unnoticed for that long. 5 s matches rewatch_delay's cap. (grpc-core sets
    # TCP_NODELAY on its sockets itself; there is no option for it.)
    ("grpc.max_reconnect_backoff_ms", 5000),
]
"""Options of every channel the clients open."""


def check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout: must be a positive number of seconds or None, got {timeout!r}")
    return float(timeout)


class Settings:
    """Resolved connection settings of a client."""

    __slots__ = ("address", "token", "token_source", "tenant", "timeout", "metadata")

    def __init__(
        self, address: str, token: str | None, tenant: str | None, timeout: float | None
    ) -> None:
        self.address = _config.parse_address(address)
        resolved = _config.resolve(token, self.address)
        self.token = resolved.token
        self.token_source = resolved.source
        """Where the token came from (:attr:`_config.ResolvedToken.source`), named in the
        errors of a refused token."""
        self.tenant = tenant or None
        self.timeout = check_timeout(timeout)
        self.metadata = _config.call_metadata(self.token, self.tenant)

    def credentials(self) -> grpc.ChannelCredentials | None:
        return grpc.ssl_channel_credentials() if self.address.tls else None

    def error(self, e: grpc.RpcError, *, auth: bool = True) -> errors.MantleError:
        """The :class:`errors.MantleError` of a failed call; that of a refused token names
        where the token came from (not for calls sent without one, ``auth=False``)."""
        return errors.from_rpc_error(e, self.token_source if auth else None)

    def follower(
        self, id: str, after_seq: int, timeout: float | None, *, drain: bool
    ) -> Follower:
        """The :class:`Follower` of one ``wait`` (``drain=False``) or ``follow``."""
        return Follower(
            id,
            self.address.target,
            after_seq,
            timeout,
            drain=drain,
            token_source=self.token_source,
        )


def retention_duration(retention: timedelta) -> Duration:
    """The ``Duration`` of a tenant's retention: a ``timedelta`` of whole seconds, not
    negative (``timedelta(0)``: the installation's default). Anything else raises before
    a request is sent."""
    if not isinstance(retention, timedelta):
        raise TypeError(
            f"retention: expected a datetime.timedelta or None, got {type(retention).__name__}"
        )
    if retention < timedelta(0):
        raise ValueError(f"retention: must not be negative, got {retention!r}")
    if retention.microseconds:
        raise ValueError(f"retention: whole seconds only, got {retention!r}")
    return Duration(seconds=retention.days * 86_400 + retention.seconds)


def create_tenant_request(
    name: str, display_name: str | None, retention: timedelta | None = None
) -> tenant_pb2.CreateTenantRequest:
    req = tenant_pb2.CreateTenantRequest(name=name, display_name=display_name or "")
    if retention is not None:
        req.settings.retention.CopyFrom(retention_duration(retention))
    return req


def update_tenant_request(
    name: str, display_name: str | None, retention: timedelta | None = None
) -> tenant_pb2.UpdateTenantRequest:
    req = tenant_pb2.UpdateTenantRequest(name=name)
    if display_name is not None:
        req.display_name = display_name
    if retention is not None:
        req.settings.retention.CopyFrom(retention_duration(retention))
        req.settings_mask.paths.append("retention")
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


def rollback_request(name: str, to_version: int) -> definition_pb2.RollbackDefinitionRequest:
    if isinstance(to_version, bool) or not isinstance(to_version, int) or to_version < 1:
        raise ValueError(f"to_version: must be a positive version number, got {to_version!r}")
    return definition_pb2.RollbackDefinitionRequest(name=name, to_version=to_version)


# -- executions ---------------------------------------------------------------------------

WATCH_WINDOW = 60.0
"""``wait`` and ``follow`` re-check the execution with GetExecution at least this often
(seconds), so a connection that died silently cannot make them hang."""

DRAIN_TIMEOUT = 10.0
"""Deadline (seconds) of a catch-up watch of a finished execution (``follow`` reads the
events recorded after the last one it saw; they are all stored already and the stream
ends by itself, so this is ample; a catch-up watch that fails is retried)."""

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
"""Failures of a watch (or of the GetExecution poll after it) that ``wait`` and ``follow``
answer by polling and watching again, as long as their timeout allows; anything else
(NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, INVALID_ARGUMENT, ...) is raised."""


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


def cancel_executions_request(
    workflow: str | None,
    status: str | int | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> execution_pb2.CancelExecutionsRequest:
    """The filter of a bulk cancel. It is sent as given: the server refuses one that sets
    none of them (INVALID_ARGUMENT), and a finished status."""
    req = execution_pb2.CancelExecutionsRequest(
        workflow=workflow or "",
        status=execution_pb2.ExecutionStatus.ValueType(
            execution_status_value(status) if status is not None else 0
        ),
    )
    if created_after is not None:
        req.created_after.CopyFrom(to_timestamp(created_after))
    if created_before is not None:
        req.created_before.CopyFrom(to_timestamp(created_before))
    return req


def delete_executions_request(
    ended_before: datetime, workflow: str | None
) -> execution_pb2.DeleteExecutionsRequest:
    if not isinstance(ended_before, datetime):
        raise TypeError(
            f"ended_before: expected an aware datetime, got {type(ended_before).__name__}"
        )
    try:
        ts = to_timestamp(ended_before)
    except ValueError as e:
        raise ValueError(f"ended_before: {e}") from e
    req = execution_pb2.DeleteExecutionsRequest(workflow=workflow or "")
    req.ended_before.CopyFrom(ts)
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


def wait_timeout_error(id: str, timeout: float | None, why: str = "") -> TimeoutError:
    return TimeoutError(f"execution {id} did not finish within {timeout} s{why}")


MAX_REASON_CHARS = 160


def short_reason(e: grpc.RpcError) -> str:
    """``CODE: detail`` of a failed call, shortened for a log line: of gRPC's
    ``failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8080: Failed
    to connect to remote host: Connection refused`` only ``Connection refused`` remains."""
    code = e.code()
    name = code.name if code is not None else "UNKNOWN"
    details = (e.details() or "").strip()
    if "last error:" in details:
        details = details.rsplit("last error:", 1)[1].rsplit(": ", 1)[-1].strip()
    if len(details) > MAX_REASON_CHARS:
        details = details[: MAX_REASON_CHARS - 3] + "..."
    return f"{name}: {details}" if details else name


class Follower:
    """The decisions of following one execution's events until it has finished, across
    dropped streams and daemon restarts: the state shared by ``wait`` and ``follow`` of
    both clients, which do the I/O and ask this what to do. One per call; not shared.

    The loop each client runs (``Client._follow``):

    1. Watch from :attr:`last_seq` with the deadline :meth:`watch_window` (which raises
       :class:`TimeoutError` once the timeout has passed); pass every event to
       :meth:`accept` and yield it if new. After a new terminal event, poll GetExecution
       (:meth:`polled` / :meth:`call_failed`): a retried execution runs again.
    2. Once the stream has ended or failed (:meth:`stream_failed`), poll unless the
       execution is known to have finished. Not finished: sleep :meth:`pause` (unless the
       watch merely ran its course) and watch again.
    3. Finished: ``wait`` stops; ``follow`` (:attr:`drain`) watches again from the last
       event seen, to read the events it has not yet (a dropped stream missed them, or a
       retry ran after the terminal event seen), until a watch brings nothing new; a
       failure of that catch-up is retried after :meth:`pause` like any other.

    Transient failures (:data:`TRANSIENT_WATCH_CODES`) are retried, pausing
    :func:`rewatch_delay` (0.25 s doubling to 5 s), until the timeout; anything else
    (NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, INVALID_ARGUMENT, ...) raises the
    matching :class:`errors.MantleError` at once. A failed poll starts an outage, logged
    once as a WARNING on the ``mantle`` logger; the next answer ends it with one INFO
    line. The timeout bounds everything: watches, polls and pauses.
    """

    __slots__ = (
        "id",
        "address",
        "last_seq",
        "timeout",
        "drain",
        "execution",
        "token_source",
        "_timeout_given",
        "_clock",
        "_deadline",
        "_drops",
        "_down_since",
        "_down_reason",
        "_watch_started",
        "_window",
    )

    def __init__(
        self,
        id: str,
        address: str,
        after_seq: int,
        timeout: float | None,
        *,
        drain: bool,
        token_source: str | None = None,
    ) -> None:
        watch_request(id, after_seq)  # checks after_seq
        self.id = id
        self.address = address
        self.last_seq = after_seq
        """The ``seq`` of the last event seen (or ``after_seq``)."""
        self.timeout = check_timeout(timeout)
        self.drain = drain
        """Whether to read the events after the last one seen once the execution has
        finished (``follow``: yes; ``wait`` needs no events)."""
        self.execution: Execution | None = None
        """The finished execution, once it is known."""
        self.token_source = token_source
        """Where the client's token came from, for the errors of a refused token."""
        self._timeout_given = timeout
        self._clock: Callable[[], float] = time.monotonic
        self._deadline: float | None = None
        self._drops = 0
        self._down_since: float | None = None
        self._down_reason = ""
        self._watch_started = 0.0
        self._window = 0.0

    def start(self, clock: Callable[[], float]) -> None:
        """Starts the timeout's clock (``time.monotonic`` or the event loop's time)."""
        self._clock = clock
        self._deadline = None if self.timeout is None else clock() + self.timeout

    @property
    def finished(self) -> bool:
        """True once GetExecution has found the execution finished."""
        return self.execution is not None

    @property
    def unreachable(self) -> bool:
        """True between a failed poll and the next answer from the daemon."""
        return self._down_since is not None

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - self._clock()

    def watch_request(self) -> execution_pb2.WatchExecutionRequest:
        return watch_request(self.id, self.last_seq)

    def watch_window(self) -> float:
        """The deadline (seconds) of the next watch: :data:`WATCH_WINDOW`, or
        :data:`DRAIN_TIMEOUT` once the execution has finished, cut to what is left of the
        timeout. Raises :class:`TimeoutError` when the timeout has passed."""
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            raise self._timeout_error()
        window = DRAIN_TIMEOUT if self.finished else WATCH_WINDOW
        if remaining is not None:
            window = min(window, remaining)
        self._watch_started = self._clock()
        self._window = window
        return window

    def _timeout_error(self) -> TimeoutError:
        why = ""
        if self._down_since is not None:
            why = (
                f": the daemon at {self.address} has been unreachable for "
                f"{self._clock() - self._down_since:.1f} s ({self._down_reason})"
            )
        if self.finished:
            return TimeoutError(
                f"execution {self.id} has finished, but its events after seq {self.last_seq} "
                f"could not be read within {self._timeout_given} s{why}"
            )
        return wait_timeout_error(self.id, self._timeout_given, why)

    def call_timeout(self, per_call: float | None) -> float | None:
        """The deadline of a GetExecution poll: the client's per-call timeout, cut to what
        is left of this one."""
        remaining = self._remaining()
        if remaining is None:
            return per_call
        remaining = max(remaining, 0.001)
        return remaining if per_call is None else min(per_call, remaining)

    def accept(self, event: execution_pb2.ExecutionEvent) -> bool:
        """Records an event from a watch; False for one already seen (skip it)."""
        self._reached()
        if event.seq <= self.last_seq:
            return False
        self.last_seq = event.seq
        self._drops = 0
        return True

    def stream_ended(self) -> None:
        """A watch ended without an error: the daemon answered."""
        self._reached()

    def stream_failed(self, e: grpc.RpcError) -> bool:
        """A watch failed: raises for an answer (NOT_FOUND, ...); for a transient failure
        returns whether the watch merely ran its course (its :meth:`watch_window` deadline
        expired), which calls for no pause. A DEADLINE_EXCEEDED long before the deadline
        does not count, so that it cannot make the loop spin."""
        code = e.code()
        if code not in TRANSIENT_WATCH_CODES:
            raise errors.from_rpc_error(e, self.token_source) from e
        if code != grpc.StatusCode.DEADLINE_EXCEEDED:
            return False
        return self._clock() - self._watch_started >= self._window / 2

    def polled(self, resp: execution_pb2.Execution) -> bool:
        """GetExecution answered; True (and :attr:`execution` set) if it has finished."""
        self._reached()
        execution = Execution.from_proto(resp)
        if not execution.finished:
            return False
        self.execution = execution
        return True

    def call_failed(self, e: grpc.RpcError) -> None:
        """A GetExecution poll (or a catch-up watch) failed: raises for an answer
        (NOT_FOUND, ...); a transient failure starts an outage (logged once) unless one is
        under way."""
        code = e.code()
        if code not in TRANSIENT_WATCH_CODES:
            raise errors.from_rpc_error(e, self.token_source) from e
        if self._down_since is not None:
            return
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            return  # the call ran out of time: TimeoutError follows, not an outage
        self._down_since = self._clock()
        self._down_reason = short_reason(e)
        until = "until it answers" if remaining is None else f"for up to {remaining:.0f} s more"
        logger.warning(
            "the daemon at %s is unreachable (%s); execution %s goes on on the server; "
            "reconnecting %s",
            self.address,
            self._down_reason,
            self.id,
            until,
        )

    def _reached(self) -> None:
        if self._down_since is None:
            return
        logger.info(
            "the daemon at %s is reachable again after %.1f s; following execution %s "
            "from seq %d",
            self.address,
            self._clock() - self._down_since,
            self.id,
            self.last_seq,
        )
        self._down_since = None
        self._down_reason = ""

    def pause(self) -> float:
        """Seconds to sleep before watching again: :func:`rewatch_delay` of the failures
        in a row, cut to what is left of the timeout."""
        self._drops += 1
        delay = rewatch_delay(self._drops)
        remaining = self._remaining()
        return delay if remaining is None else min(delay, max(remaining, 0.0))

    def result(self) -> Execution:
        """The finished execution (after the loop stopped)."""
        if self.execution is None:  # pragma: no cover - the loops stop only once it is set
            raise RuntimeError(f"execution {self.id} has not finished")
        return self.execution


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


# -- triggers -----------------------------------------------------------------------------


def list_triggers_request(workflow: str | None) -> trigger_pb2.ListTriggersRequest:
    if workflow is not None and not isinstance(workflow, str):
        raise TypeError(f"workflow: expected a workflow name or None, got {type(workflow).__name__}")
    return trigger_pb2.ListTriggersRequest(workflow=workflow or "")


def trigger_request(cls: type[_TriggerRequest], id: str) -> _TriggerRequest:
    """A request naming one trigger by its id (a non-empty string)."""
    if not isinstance(id, str):
        raise TypeError(f"id: expected a trigger id (str), got {type(id).__name__}")
    if not id:
        raise ValueError("id: a trigger id is required (see list_triggers)")
    return cls(id=id)
