"""Asyncio client for the Mantle daemon (``grpc.aio``).

:class:`Client` has the same constructor and methods as :class:`mantle.Client`; the
methods are coroutines::

    async with mantle.aio.Client() as client:
        info = await client.server_info()
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mantle import _common
from mantle._config import DEFAULT_ADDRESS, Address
from mantle.types import (
    ActionInfo,
    ApiKey,
    ApplyResult,
    CreatedApiKey,
    Definition,
    DefinitionSummary,
    DefinitionVersion,
    Execution,
    ExecutionEvent,
    Plan,
    Rotation,
    Secret,
    ServerInfo,
    StepAttempt,
    Tenant,
    Trigger,
    ValidationResult,
)
from mantle.v1 import (
    definition_pb2,
    definition_pb2_grpc,
    execution_pb2,
    execution_pb2_grpc,
    secret_pb2,
    secret_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
    trigger_pb2,
    trigger_pb2_grpc,
)

__all__ = ["Client"]

_Resp = TypeVar("_Resp")


class Client:
    """Asyncio client of the Mantle gRPC API; see :class:`mantle.Client` for the
    arguments, token discovery and retry behaviour.

    Create it inside a running event loop and close it with ``await client.close()`` or
    ``async with``.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        *,
        tenant: str | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self._settings = _common.Settings(address, token, tenant, timeout)
        creds = self._settings.credentials()
        target = self._settings.address.target
        self._channel: grpc.aio.Channel = (
            grpc.aio.secure_channel(target, creds, options=_common.CHANNEL_OPTIONS)
            if creds
            else grpc.aio.insecure_channel(target, options=_common.CHANNEL_OPTIONS)
        )
        self._system = system_pb2_grpc.SystemServiceStub(self._channel)
        self._tenants = tenant_pb2_grpc.TenantServiceStub(self._channel)
        self._definitions = definition_pb2_grpc.DefinitionServiceStub(self._channel)
        self._executions = execution_pb2_grpc.ExecutionServiceStub(self._channel)
        self._secrets = secret_pb2_grpc.SecretServiceStub(self._channel)
        self._triggers = trigger_pb2_grpc.TriggerServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The parsed daemon address."""
        return self._settings.address

    @property
    def tenant(self) -> str | None:
        """The tenant named in ``x-mantle-tenant``, if any."""
        return self._settings.tenant

    @property
    def has_token(self) -> bool:
        """True if requests carry a bearer token (given, from the environment or file)."""
        return self._settings.token is not None

    async def close(self) -> None:
        """Closes the channel. Calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"mantle.aio.Client(address={self._settings.address.target!r}, tenant={self.tenant!r})"
        )

    # -- plumbing --------------------------------------------------------------------

    async def _call(
        self,
        method: Callable[..., Awaitable[_Resp]],
        request: Any,
        *,
        read: bool,
        auth: bool = True,
    ) -> _Resp:
        metadata = self._settings.metadata if auth else ()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=self._settings.timeout, metadata=metadata)
            except grpc.RpcError as e:
                if _common.should_retry(e.code(), read=read, attempt=attempt):
                    await asyncio.sleep(_common.backoff_delay(attempt))
                    continue
                raise self._settings.error(e, auth=auth) from e

    # -- system ----------------------------------------------------------------------

    async def server_info(self) -> ServerInfo:
        """Returns the daemon's version and database backend, and the identity this client
        authenticated as. Any valid token may call it."""
        req = system_pb2.GetServerInfoRequest()
        return ServerInfo.from_proto(await self._call(self._system.GetServerInfo, req, read=True))

    async def health(self, service: str = "") -> str:
        """Returns the ``grpc.health.v1`` status name (``"SERVING"``, ``"NOT_SERVING"``,
        ...) of ``service`` (``""``: the whole daemon). Needs no token."""
        req = health_pb2.HealthCheckRequest(service=service)
        check = self._health.Check  # type: ignore[attr-defined,unused-ignore]
        resp = await self._call(check, req, read=True, auth=False)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    # -- tenants ---------------------------------------------------------------------

    async def create_tenant(
        self,
        name: str,
        display_name: str | None = None,
        *,
        retention: timedelta | None = None,
    ) -> Tenant:
        """Creates a tenant (``tenants:admin``). Raises :class:`errors.AlreadyExists` for a
        taken name and :class:`errors.InvalidArgument` for an invalid one. ``retention``
        (whole seconds; None or ``timedelta(0)``: the installation's default) is how long
        its finished executions are kept; a negative or fractional one raises
        ``ValueError`` before anything is sent."""
        req = _common.create_tenant_request(name, display_name, retention)
        return Tenant.from_proto(await self._call(self._tenants.CreateTenant, req, read=False))

    async def get_tenant(self, name: str) -> Tenant:
        """Returns one tenant; another tenant's name raises :class:`errors.NotFound` for
        tenant keys."""
        req = tenant_pb2.GetTenantRequest(name=name)
        return Tenant.from_proto(await self._call(self._tenants.GetTenant, req, read=True))

    async def list_tenants(self, *, page_size: int = 0) -> list[Tenant]:
        """Returns all tenants ordered by name, fetching every page (``page_size`` per
        request; 0 means the server default)."""
        return [t async for t in self.iter_tenants(page_size=page_size)]

    async def iter_tenants(self, *, page_size: int = 0) -> AsyncIterator[Tenant]:
        """Like :meth:`list_tenants`, but yields tenants as pages arrive."""
        size = _common.check_page_size(page_size)
        token = ""
        while True:
            req = tenant_pb2.ListTenantsRequest(page_size=size, page_token=token)
            resp = await self._call(self._tenants.ListTenants, req, read=True)
            for t in resp.tenants:
                yield Tenant.from_proto(t)
            token = resp.next_page_token
            if not token:
                return

    async def update_tenant(
        self,
        name: str,
        *,
        display_name: str | None = None,
        retention: timedelta | None = None,
    ) -> Tenant:
        """Changes a tenant; None leaves a field unchanged, ``""`` clears the display name
        and ``timedelta(0)`` the retention (see :meth:`mantle.Client.update_tenant`)."""
        req = _common.update_tenant_request(name, display_name, retention)
        return Tenant.from_proto(await self._call(self._tenants.UpdateTenant, req, read=False))

    async def delete_tenant(self, name: str) -> None:
        """Deletes a tenant and revokes its keys; ``default`` raises
        :class:`errors.FailedPrecondition`."""
        req = tenant_pb2.DeleteTenantRequest(name=name)
        await self._call(self._tenants.DeleteTenant, req, read=False)

    # -- API keys --------------------------------------------------------------------

    async def create_api_key(
        self,
        tenant: str,
        scopes: Iterable[str],
        name: str | None = None,
        expire_time: datetime | timedelta | None = None,
    ) -> CreatedApiKey:
        """Creates an API key and returns it with its token (shown only this once).
        ``tenant=""`` creates an operator key; ``expire_time`` is an aware datetime or a
        timedelta from now."""
        req = _common.create_api_key_request(tenant, scopes, name, expire_time)
        resp = await self._call(self._tenants.CreateApiKey, req, read=False)
        return CreatedApiKey.from_proto(resp)

    async def list_api_keys(
        self, tenant: str = "", show_revoked: bool = False, *, page_size: int = 0
    ) -> list[ApiKey]:
        """Returns the API keys of ``tenant`` (``""``: operator keys), newest first,
        fetching every page."""
        size = _common.check_page_size(page_size)
        keys: list[ApiKey] = []
        token = ""
        while True:
            req = tenant_pb2.ListApiKeysRequest(
                tenant=tenant, page_size=size, page_token=token, show_revoked=show_revoked
            )
            resp = await self._call(self._tenants.ListApiKeys, req, read=True)
            keys.extend(ApiKey.from_proto(k) for k in resp.api_keys)
            token = resp.next_page_token
            if not token:
                return keys

    async def revoke_api_key(self, id: str) -> ApiKey:
        """Revokes an API key and returns it with ``revoke_time`` set."""
        req = tenant_pb2.RevokeApiKeyRequest(id=id)
        return ApiKey.from_proto(await self._call(self._tenants.RevokeApiKey, req, read=False))

    # -- workflow definitions --------------------------------------------------------

    async def list_actions(self) -> list[ActionInfo]:
        """The actions a step may name, each with its params as JSON Schema (the same
        declarations validation checks files against). Needs ``definitions:read``."""
        req = definition_pb2.ListActionsRequest()
        resp = await self._call(self._definitions.ListActions, req, read=True)
        return [ActionInfo.from_proto(a) for a in resp.actions]

    async def validate(self, source: str, filename: str | None = None) -> ValidationResult:
        """Checks a workflow file's YAML text without storing anything; a file with
        problems raises :class:`errors.InvalidArgument` with ``.problems``."""
        req = _common.source_request(definition_pb2.ValidateDefinitionRequest, source, filename)
        resp = await self._call(self._definitions.ValidateDefinition, req, read=True)
        return ValidationResult.from_proto(resp)

    async def validate_file(self, path: str | os.PathLike[str]) -> ValidationResult:
        """Reads a workflow file and validates it, named by ``path`` in problem reports."""
        return await self.validate(*await asyncio.to_thread(_common.read_source_file, path))

    async def plan(self, source: str, filename: str | None = None) -> Plan:
        """Compares a workflow file with the latest stored version: what :meth:`apply`
        would change."""
        req = _common.source_request(definition_pb2.PlanDefinitionRequest, source, filename)
        return Plan.from_proto(await self._call(self._definitions.PlanDefinition, req, read=True))

    async def plan_file(self, path: str | os.PathLike[str]) -> Plan:
        """Reads a workflow file and plans it, named by ``path`` in problem reports."""
        return await self.plan(*await asyncio.to_thread(_common.read_source_file, path))

    async def apply(self, source: str, filename: str | None = None) -> ApplyResult:
        """Stores a workflow file as a new version if its content changed."""
        req = _common.source_request(definition_pb2.ApplyDefinitionRequest, source, filename)
        resp = await self._call(self._definitions.ApplyDefinition, req, read=False)
        return ApplyResult.from_proto(resp)

    async def apply_file(self, path: str | os.PathLike[str]) -> ApplyResult:
        """Reads a workflow file and applies it, named by ``path`` in problem reports."""
        return await self.apply(*await asyncio.to_thread(_common.read_source_file, path))

    async def rollback_definition(self, name: str, to_version: int) -> ApplyResult:
        """Stores the YAML of an earlier version again as a new latest version
        (``created`` is False when it is the latest's content already). Needs
        ``definitions:write``; an unknown workflow or version raises
        :class:`errors.NotFound`, a ``to_version`` below 1 ``ValueError``."""
        req = _common.rollback_request(name, to_version)
        resp = await self._call(self._definitions.RollbackDefinition, req, read=False)
        return ApplyResult.from_proto(resp)

    async def get_definition(self, name: str, version: int = 0) -> Definition:
        """Returns one stored version of a workflow (``version=0``: the latest)."""
        req = definition_pb2.GetDefinitionRequest(name=name, version=_common.check_version(version))
        resp = await self._call(self._definitions.GetDefinition, req, read=True)
        return Definition.from_proto(resp)

    async def list_definitions(self, *, page_size: int = 0) -> list[DefinitionSummary]:
        """Returns the tenant's workflows ordered by name, fetching every page."""
        size = _common.check_page_size(page_size)
        definitions: list[DefinitionSummary] = []
        token = ""
        while True:
            req = definition_pb2.ListDefinitionsRequest(page_size=size, page_token=token)
            resp = await self._call(self._definitions.ListDefinitions, req, read=True)
            definitions.extend(DefinitionSummary.from_proto(d) for d in resp.definitions)
            token = resp.next_page_token
            if not token:
                return definitions

    async def list_definition_versions(
        self, name: str, *, page_size: int = 0
    ) -> list[DefinitionVersion]:
        """Returns the versions of one workflow, newest first, fetching every page."""
        size = _common.check_page_size(page_size)
        versions: list[DefinitionVersion] = []
        token = ""
        while True:
            req = definition_pb2.ListDefinitionVersionsRequest(
                name=name, page_size=size, page_token=token
            )
            resp = await self._call(self._definitions.ListDefinitionVersions, req, read=True)
            versions.extend(DefinitionVersion.from_proto(v) for v in resp.versions)
            token = resp.next_page_token
            if not token:
                return versions

    async def delete_definition(self, name: str) -> None:
        """Deletes a workflow; applying it again continues its version numbers."""
        req = definition_pb2.DeleteDefinitionRequest(name=name)
        await self._call(self._definitions.DeleteDefinition, req, read=False)

    # -- secrets ---------------------------------------------------------------------

    async def create_secret(self, name: str, type: str, fields: Mapping[str, str]) -> Secret:
        """Stores a new secret and returns its metadata (never its values). Needs
        ``secrets:write``.

        Args:
            name: 1 to 63 lowercase letters, digits, '-' and '_', starting with a letter.
            type: ``generic`` (any fields), ``bearer`` {token}, ``basic`` {username,
                password}, ``header`` {name, value}, ``openai`` {api_key, optional
                org_id, base_url}, ``anthropic`` {api_key, optional base_url},
                ``postgres`` {url} or ``imap`` {host, username, password, optional port,
                tls}.
            fields: Field names to string values; at most 64 fields of at most 64 KiB.

        Raises:
            errors.AlreadyExists: the name is taken in the tenant.
            errors.InvalidArgument: an unknown type, or a missing, unknown or empty
                field; the message names it (``fields.password: ...``), never a value.
        """
        req = _common.create_secret_request(name, type, fields)
        return Secret.from_proto(await self._call(self._secrets.CreateSecret, req, read=False))

    async def update_secret(self, name: str, fields: Mapping[str, str]) -> Secret:
        """Replaces all of a secret's fields (its type stays; the new fields must satisfy
        it) and returns its metadata. Needs ``secrets:write``."""
        req = _common.update_secret_request(name, fields)
        return Secret.from_proto(await self._call(self._secrets.UpdateSecret, req, read=False))

    async def get_secret(self, name: str) -> Secret:
        """Returns a secret's metadata: type, field names, key id, times. Needs
        ``secrets:read``. An unknown name (or another tenant's secret) raises
        :class:`errors.NotFound`."""
        req = secret_pb2.GetSecretRequest(name=name)
        return Secret.from_proto(await self._call(self._secrets.GetSecret, req, read=True))

    async def list_secrets(self, *, page_size: int = 0) -> list[Secret]:
        """Returns the tenant's secrets (metadata only) ordered by name, fetching every
        page (``page_size`` per request; 0 means the server default). Needs
        ``secrets:read``."""
        size = _common.check_page_size(page_size)
        secrets: list[Secret] = []
        token = ""
        while True:
            req = secret_pb2.ListSecretsRequest(page_size=size, page_token=token)
            resp = await self._call(self._secrets.ListSecrets, req, read=True)
            secrets.extend(Secret.from_proto(s) for s in resp.secrets)
            token = resp.next_page_token
            if not token:
                return secrets

    async def delete_secret(self, name: str) -> None:
        """Deletes a secret; steps naming it fail from then on. Needs ``secrets:write``."""
        req = secret_pb2.DeleteSecretRequest(name=name)
        await self._call(self._secrets.DeleteSecret, req, read=False)

    async def rotate_encryption_key(self, batch_size: int = 0) -> Rotation:
        """Re-encrypts every secret of every tenant still sealed with the daemon's
        ``MANTLE_ENCRYPTION_KEY_PREVIOUS`` under its ``MANTLE_ENCRYPTION_KEY``,
        ``batch_size`` secrets per transaction (0: the server default, 100). Needs
        ``tenants:admin``."""
        req = _common.rotate_request(batch_size)
        return Rotation.from_proto(await self._call(self._secrets.RotateEncryptionKey, req, read=False))

    # -- triggers --------------------------------------------------------------------

    async def list_triggers(self, workflow: str | None = None) -> list[Trigger]:
        """Returns the tenant's triggers (of ``workflow`` only, when given), ordered by
        workflow, then by key. Needs ``definitions:read``. See
        :meth:`mantle.Client.list_triggers`."""
        req = _common.list_triggers_request(workflow)
        resp = await self._call(self._triggers.ListTriggers, req, read=True)
        return [Trigger.from_proto(t) for t in resp.triggers]

    async def pause_trigger(self, id: str) -> Trigger:
        """Pauses a trigger: it starts no execution until resumed. Returns the trigger.
        Needs ``definitions:write``; an unknown id raises :class:`errors.NotFound`."""
        req = _common.trigger_request(trigger_pb2.PauseTriggerRequest, id)
        return Trigger.from_proto(await self._call(self._triggers.PauseTrigger, req, read=False))

    async def resume_trigger(self, id: str) -> Trigger:
        """Resumes a paused trigger and returns it. Needs ``definitions:write``; an unknown
        id raises :class:`errors.NotFound`."""
        req = _common.trigger_request(trigger_pb2.ResumeTriggerRequest, id)
        return Trigger.from_proto(await self._call(self._triggers.ResumeTrigger, req, read=False))

    async def fire_trigger(self, id: str) -> Execution:
        """Starts one execution of the trigger's workflow now, paused or not, as the
        trigger would, and returns it at once (see :meth:`mantle.Client.fire_trigger`). Needs
        ``executions:write``."""
        req = _common.trigger_request(trigger_pb2.FireTriggerRequest, id)
        resp = await self._call(self._triggers.FireTrigger, req, read=False)
        return Execution.from_proto(resp.execution)

    # -- executions ------------------------------------------------------------------

    async def start_execution(
        self,
        workflow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        version: int = 0,
        idempotency_key: str | None = None,
    ) -> Execution:
        """Starts an execution of a workflow (``version=0``: the latest) with ``inputs``
        sent as JSON, and returns it at once. An invalid input raises
        :class:`errors.InvalidArgument` naming it."""
        req = _common.start_execution_request(workflow, inputs, version, idempotency_key)
        # With an idempotency key the start is safe to retry.
        resp = await self._call(self._executions.StartExecution, req, read=idempotency_key is not None)
        return Execution.from_proto(resp)

    async def get_execution(self, id: str) -> Execution:
        """Returns one execution; an unknown id raises :class:`errors.NotFound`."""
        req = execution_pb2.GetExecutionRequest(id=id)
        return Execution.from_proto(await self._call(self._executions.GetExecution, req, read=True))

    async def list_executions(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        view: str = "basic",
    ) -> list[Execution]:
        """Returns the tenant's executions, newest first, fetching every page; filters as
        in :meth:`mantle.Client.list_executions`. ``view="basic"`` (the default) leaves
        out inputs, outputs and trigger (those attributes are None); ``view="full"``
        returns them. Any other ``view`` raises ValueError."""
        return [
            e
            async for e in self.iter_executions(
                workflow=workflow,
                status=status,
                created_after=created_after,
                created_before=created_before,
                page_size=page_size,
                view=view,
            )
        ]

    async def iter_executions(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        view: str = "basic",
    ) -> AsyncIterator[Execution]:
        """Like :meth:`list_executions`, but yields executions as pages arrive (the
        arguments, such as ``view``, are checked when iteration starts)."""
        token = ""
        while True:
            req = _common.list_executions_request(
                workflow, status, created_after, created_before, page_size, token, view
            )
            resp = await self._call(self._executions.ListExecutions, req, read=True)
            for e in resp.executions:
                yield Execution.from_proto(e)
            token = resp.next_page_token
            if not token:
                return

    async def cancel_execution(self, id: str) -> Execution:
        """Cancels an execution; a finished one is returned unchanged."""
        req = execution_pb2.CancelExecutionRequest(id=id)
        resp = await self._call(self._executions.CancelExecution, req, read=False)
        return Execution.from_proto(resp)

    async def cancel_executions(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> int:
        """Requests the cancellation of every unfinished execution the filter matches and
        returns how many, without waiting for them to end. At least one filter is
        required (:class:`errors.InvalidArgument` otherwise). See
        :meth:`mantle.Client.cancel_executions`."""
        req = _common.cancel_executions_request(workflow, status, created_after, created_before)
        resp = await self._call(self._executions.CancelExecutions, req, read=False)
        return resp.cancel_requested

    async def delete_execution(self, id: str) -> None:
        """Deletes a finished execution and everything that belongs to it. An unfinished
        one raises :class:`errors.FailedPrecondition`, an unknown id
        :class:`errors.NotFound`."""
        req = execution_pb2.DeleteExecutionRequest(id=id)
        await self._call(self._executions.DeleteExecution, req, read=False)

    async def delete_executions(
        self, *, ended_before: datetime, workflow: str | None = None
    ) -> int:
        """Deletes the finished executions that ended before ``ended_before`` (an aware
        datetime), of ``workflow`` only when given, and returns how many."""
        req = _common.delete_executions_request(ended_before, workflow)
        resp = await self._call(self._executions.DeleteExecutions, req, read=False)
        return resp.deleted

    async def retry_execution(self, id: str) -> Execution:
        """Continues a failed, cancelled or timed-out execution; completed steps are not
        run again."""
        req = execution_pb2.RetryExecutionRequest(id=id)
        resp = await self._call(self._executions.RetryExecution, req, read=False)
        return Execution.from_proto(resp)

    async def list_step_attempts(self, id: str, *, view: str = "full") -> list[StepAttempt]:
        """Returns every attempt of every step of an execution, in the order they started,
        fetching every page; ``view="basic"`` leaves out the outputs (``output`` is
        None). See :meth:`mantle.Client.list_step_attempts`."""
        attempts: list[StepAttempt] = []
        token = ""
        while True:
            req = _common.list_step_attempts_request(id, token, view)
            resp = await self._call(self._executions.ListStepAttempts, req, read=True)
            attempts.extend(StepAttempt.from_proto(a) for a in resp.attempts)
            token = resp.next_page_token
            if not token:
                return attempts

    async def watch(self, id: str, after_seq: int = 0) -> AsyncIterator[ExecutionEvent]:
        """Yields an execution's events in sequence order (after ``after_seq``) as they
        happen, ending after the event that finishes the execution: one raw stream (see
        :meth:`follow` for one that survives restarts); see :meth:`mantle.Client.watch`."""
        req = _common.watch_request(id, after_seq)
        call = self._executions.WatchExecution(req, metadata=self._settings.metadata)
        try:
            async for msg in call:
                yield ExecutionEvent.from_proto(msg)
        except grpc.RpcError as e:
            raise self._settings.error(e) from e
        finally:
            call.cancel()

    def follow(
        self, id: str, after_seq: int = 0, timeout: float | None = None
    ) -> AsyncIterator[ExecutionEvent]:
        """Yields each of an execution's events exactly once, in ``seq`` order, from after
        ``after_seq``, until the execution has finished, surviving dropped streams and
        daemon restarts; see :meth:`mantle.Client.follow`. Use it with ``async for``;
        leaving the loop early, close it (``contextlib.aclosing``) to cancel the stream at
        once. Raises :class:`TimeoutError` after ``timeout`` seconds."""
        follower = self._settings.follower(id, after_seq, timeout, drain=True)
        return self._follow_events(follower)

    async def wait(self, id: str, timeout: float | None = None) -> Execution:
        """Waits until an execution has finished and returns it, surviving dropped streams
        and daemon restarts as :meth:`follow` does; raises :class:`TimeoutError` after
        ``timeout`` seconds. See :meth:`mantle.Client.wait`."""
        follower = self._settings.follower(id, 0, timeout, drain=False)
        events = self._follow(follower)
        try:
            async for _ in events:
                pass
        finally:
            await events.aclose()
        return follower.result()

    async def _follow_events(self, follower: _common.Follower) -> AsyncIterator[ExecutionEvent]:
        events = self._follow(follower)
        try:
            async for msg in events:
                yield ExecutionEvent.from_proto(msg)
        finally:
            await events.aclose()

    async def _follow(
        self, f: _common.Follower
    ) -> AsyncGenerator[execution_pb2.ExecutionEvent, None]:
        """The loop of :meth:`follow` and :meth:`wait`, as :meth:`mantle.Client._follow`."""
        f.start(asyncio.get_running_loop().time)
        while True:
            before = f.last_seq
            call = self._executions.WatchExecution(
                f.watch_request(), timeout=f.watch_window(), metadata=self._settings.metadata
            )
            failure: grpc.RpcError | None = None
            try:
                async for msg in call:
                    if not f.accept(msg):
                        continue
                    yield msg
                    # A retried execution runs again after a terminal event.
                    if (
                        not f.finished
                        and _common.is_terminal_event(msg)
                        and await self._poll(f)
                    ):
                        break
            except grpc.RpcError as e:
                failure = e
            finally:
                call.cancel()
            if failure is None:
                f.stream_ended()
            if not f.finished:
                expired = failure is not None and f.stream_failed(failure)
                if not await self._poll(f):
                    # A watch that merely ran its course is renewed at once.
                    if f.unreachable or not expired:
                        await asyncio.sleep(f.pause())
                    continue
            elif failure is not None:  # catching up on the finished execution
                f.call_failed(failure)
                await asyncio.sleep(f.pause())
                continue
            elif f.last_seq == before:
                return  # caught up: nothing new
            if not f.drain:
                return

    async def _poll(self, f: _common.Follower) -> bool:
        """GetExecution, once: True if the execution has finished; False if not, or if
        the daemon did not answer (transient failures are the loop's to retry)."""
        req = execution_pb2.GetExecutionRequest(id=f.id)
        try:
            resp = await self._executions.GetExecution(
                req,
                timeout=f.call_timeout(self._settings.timeout),
                metadata=self._settings.metadata,
            )
        except grpc.RpcError as e:
            f.call_failed(e)
            return False
        return f.polled(resp)
