"""Synchronous client for the Mantle daemon (grpcio)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
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
    """Synchronous client of the Mantle gRPC API.

    Args:
        address: ``host:port``, ``http://host:port`` or ``https://host:port`` (TLS with
            the system's default root certificates).
        token: Bearer token. When None: the ``MANTLE_TOKEN`` environment variable, else
            the operator token file ``<data dir>/operator-token`` (data dir:
            ``MANTLE_DATA_DIR``, else ``$XDG_DATA_HOME/mantle``, else
            ``~/.local/share/mantle``), only when ``address`` reaches the daemon that
            wrote it (its ``address=`` line: the same port, and the same IP address or a
            loopback host for a daemon on loopback or every interface). Pass ``""`` to
            send no token at all. A refused token's error names where it came from
            (:attr:`mantle.errors.MantleError.token_source`).
        tenant: Sent as ``x-mantle-tenant``: the tenant an operator key acts on.
        timeout: Deadline in seconds for each attempt of each call; None for no deadline.

    Calls failing with ``UNAVAILABLE`` (and, for read-only calls, ``DEADLINE_EXCEEDED``)
    are retried with a short backoff, at most 3 attempts in all. Failures raise
    :class:`mantle.errors.MantleError` subclasses.

    Use it as a context manager, or call :meth:`close`::

        with mantle.Client() as client:
            print(client.server_info().version)
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
        self._channel: grpc.Channel = (
            grpc.secure_channel(target, creds, options=_common.CHANNEL_OPTIONS)
            if creds
            else grpc.insecure_channel(target, options=_common.CHANNEL_OPTIONS)
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

    def close(self) -> None:
        """Closes the channel. Calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"mantle.Client(address={self._settings.address.target!r}, tenant={self.tenant!r})"

    # -- plumbing --------------------------------------------------------------------

    def _call(
        self,
        method: Callable[..., _Resp],
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
                return method(request, timeout=self._settings.timeout, metadata=metadata)
            except grpc.RpcError as e:
                if _common.should_retry(e.code(), read=read, attempt=attempt):
                    time.sleep(_common.backoff_delay(attempt))
                    continue
                raise self._settings.error(e, auth=auth) from e

    # -- system ----------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        """Returns the daemon's version and database backend, and the identity this client
        authenticated as (:attr:`ServerInfo.caller`). Any valid token may call it."""
        resp = self._call(self._system.GetServerInfo, system_pb2.GetServerInfoRequest(), read=True)
        return ServerInfo.from_proto(resp)

    def health(self, service: str = "") -> str:
        """Checks ``grpc.health.v1.Health`` and returns the status name: ``"SERVING"``,
        ``"NOT_SERVING"``, ``"SERVICE_UNKNOWN"`` or ``"UNKNOWN"``.

        ``service`` is ``""`` for the daemon as a whole, or a service name such as
        ``"mantle.v1.TenantService"`` (an unknown name raises :class:`errors.NotFound`).
        Needs no token.
        """
        check = self._health.Check  # type: ignore[attr-defined,unused-ignore]
        req = health_pb2.HealthCheckRequest(service=service)
        resp = self._call(check, req, read=True, auth=False)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    # -- tenants ---------------------------------------------------------------------

    def create_tenant(
        self,
        name: str,
        display_name: str | None = None,
        *,
        retention: timedelta | None = None,
    ) -> Tenant:
        """Creates a tenant. Needs ``tenants:admin``.

        Args:
            retention: How long the tenant's finished executions are kept, counted from
                their end, in whole seconds (then they are deleted with their step
                attempts, events and checkpoints). None or ``timedelta(0)``: the
                installation's default (``MANTLE_RETENTION_DAYS``).

        Raises:
            errors.AlreadyExists: the name is taken.
            errors.InvalidArgument: the name is not a DNS label (1-63 characters of
                lowercase letters, digits and '-', starting with a letter, not ending
                with '-') or the display name is too long.
            ValueError: ``retention`` is negative or not whole seconds (nothing is sent).
        """
        req = _common.create_tenant_request(name, display_name, retention)
        return Tenant.from_proto(self._call(self._tenants.CreateTenant, req, read=False))

    def get_tenant(self, name: str) -> Tenant:
        """Returns one tenant. Operators may read any tenant, tenant keys only their own
        (another tenant's name raises :class:`errors.NotFound`)."""
        req = tenant_pb2.GetTenantRequest(name=name)
        return Tenant.from_proto(self._call(self._tenants.GetTenant, req, read=True))

    def list_tenants(self, *, page_size: int = 0) -> list[Tenant]:
        """Returns all tenants ordered by name, fetching every page.

        Args:
            page_size: Tenants per request; 0 uses the server default (50), at most 1000.
        """
        return list(self.iter_tenants(page_size=page_size))

    def iter_tenants(self, *, page_size: int = 0) -> Iterator[Tenant]:
        """Like :meth:`list_tenants`, but yields tenants as pages arrive."""
        size = _common.check_page_size(page_size)
        token = ""
        while True:
            req = tenant_pb2.ListTenantsRequest(page_size=size, page_token=token)
            resp = self._call(self._tenants.ListTenants, req, read=True)
            for t in resp.tenants:
                yield Tenant.from_proto(t)
            token = resp.next_page_token
            if not token:
                return

    def update_tenant(
        self,
        name: str,
        *,
        display_name: str | None = None,
        retention: timedelta | None = None,
    ) -> Tenant:
        """Changes a tenant and returns it. Fields left as None are unchanged;
        ``display_name=""`` clears the display name and ``retention=timedelta(0)`` the
        retention (back to the installation's default). Needs ``tenants:admin``.

        Raises:
            ValueError: ``retention`` is negative or not whole seconds (nothing is sent).
        """
        req = _common.update_tenant_request(name, display_name, retention)
        return Tenant.from_proto(self._call(self._tenants.UpdateTenant, req, read=False))

    def delete_tenant(self, name: str) -> None:
        """Deletes a tenant and revokes all of its API keys. Needs ``tenants:admin``.

        Raises:
            errors.FailedPrecondition: for the tenant ``default``.
            errors.NotFound: no such tenant.
        """
        req = tenant_pb2.DeleteTenantRequest(name=name)
        self._call(self._tenants.DeleteTenant, req, read=False)

    # -- API keys --------------------------------------------------------------------

    def create_api_key(
        self,
        tenant: str,
        scopes: Iterable[str],
        name: str | None = None,
        expire_time: datetime | timedelta | None = None,
    ) -> CreatedApiKey:
        """Creates an API key and returns it with its token (shown only this once).

        Args:
            tenant: Tenant the key acts on; ``""`` creates an operator key (its only
                allowed scope is ``tenants:admin``).
            scopes: E.g. ``["executions:read"]`` or ``["*"]``; at least one.
            name: Free-form label, at most 200 characters.
            expire_time: When the key stops working: an aware ``datetime`` in the
                future, or a ``timedelta`` from now. None means never.
        """
        req = _common.create_api_key_request(tenant, scopes, name, expire_time)
        return CreatedApiKey.from_proto(self._call(self._tenants.CreateApiKey, req, read=False))

    def list_api_keys(
        self, tenant: str = "", show_revoked: bool = False, *, page_size: int = 0
    ) -> list[ApiKey]:
        """Returns the API keys of ``tenant`` (``""``: the operator keys), newest first,
        fetching every page. Revoked keys are included only with ``show_revoked=True``."""
        size = _common.check_page_size(page_size)
        keys: list[ApiKey] = []
        token = ""
        while True:
            req = tenant_pb2.ListApiKeysRequest(
                tenant=tenant, page_size=size, page_token=token, show_revoked=show_revoked
            )
            resp = self._call(self._tenants.ListApiKeys, req, read=True)
            keys.extend(ApiKey.from_proto(k) for k in resp.api_keys)
            token = resp.next_page_token
            if not token:
                return keys

    def revoke_api_key(self, id: str) -> ApiKey:
        """Revokes an API key (requests made with it are refused from then on) and
        returns it with ``revoke_time`` set. Unknown ids raise :class:`errors.NotFound`."""
        req = tenant_pb2.RevokeApiKeyRequest(id=id)
        return ApiKey.from_proto(self._call(self._tenants.RevokeApiKey, req, read=False))

    # -- workflow definitions --------------------------------------------------------

    def list_actions(self) -> list[ActionInfo]:
        """The actions a step may name, each with its params as JSON Schema (the same
        declarations validation checks files against). Needs ``definitions:read``."""
        req = definition_pb2.ListActionsRequest()
        resp = self._call(self._definitions.ListActions, req, read=True)
        return [ActionInfo.from_proto(a) for a in resp.actions]

    def validate(self, source: str, filename: str | None = None) -> ValidationResult:
        """Checks a workflow file (its YAML text) without storing anything. Needs
        ``definitions:read``.

        Args:
            source: The file's YAML text, at most 1 MiB.
            filename: The file's name, used in problem reports (default ``<input>``).

        Raises:
            errors.InvalidArgument: the file does not validate; ``.problems`` lists every
                problem with its line, column and YAML path.
        """
        req = _common.source_request(definition_pb2.ValidateDefinitionRequest, source, filename)
        resp = self._call(self._definitions.ValidateDefinition, req, read=True)
        return ValidationResult.from_proto(resp)

    def validate_file(self, path: str | os.PathLike[str]) -> ValidationResult:
        """Reads a workflow file and validates it, named by ``path`` in problem reports."""
        return self.validate(*_common.read_source_file(path))

    def plan(self, source: str, filename: str | None = None) -> Plan:
        """Compares a workflow file with the latest stored version of the same workflow:
        what :meth:`apply` would change. Needs ``definitions:read``. Raises
        :class:`errors.InvalidArgument` with ``.problems`` as :meth:`validate` does."""
        req = _common.source_request(definition_pb2.PlanDefinitionRequest, source, filename)
        return Plan.from_proto(self._call(self._definitions.PlanDefinition, req, read=True))

    def plan_file(self, path: str | os.PathLike[str]) -> Plan:
        """Reads a workflow file and plans it, named by ``path`` in problem reports."""
        return self.plan(*_common.read_source_file(path))

    def apply(self, source: str, filename: str | None = None) -> ApplyResult:
        """Stores a workflow file as a new version if its normalized content changed
        (``created`` says whether it did). Needs ``definitions:write``. Raises
        :class:`errors.InvalidArgument` with ``.problems`` as :meth:`validate` does."""
        req = _common.source_request(definition_pb2.ApplyDefinitionRequest, source, filename)
        resp = self._call(self._definitions.ApplyDefinition, req, read=False)
        return ApplyResult.from_proto(resp)

    def apply_file(self, path: str | os.PathLike[str]) -> ApplyResult:
        """Reads a workflow file and applies it, named by ``path`` in problem reports."""
        return self.apply(*_common.read_source_file(path))

    def rollback_definition(self, name: str, to_version: int) -> ApplyResult:
        """Stores the YAML of an earlier version of a workflow again, as a new latest
        version (``created`` is False, and nothing changes, when that version's content is
        the latest's already). Needs ``definitions:write``.

        Raises:
            ValueError: ``to_version`` is not a positive integer (nothing is sent).
            errors.NotFound: no such workflow or version.
        """
        req = _common.rollback_request(name, to_version)
        resp = self._call(self._definitions.RollbackDefinition, req, read=False)
        return ApplyResult.from_proto(resp)

    def get_definition(self, name: str, version: int = 0) -> Definition:
        """Returns one stored version of a workflow; ``version=0`` means the latest.
        Needs ``definitions:read``. Raises :class:`errors.NotFound` for an unknown (or
        deleted) workflow or version."""
        req = definition_pb2.GetDefinitionRequest(name=name, version=_common.check_version(version))
        return Definition.from_proto(self._call(self._definitions.GetDefinition, req, read=True))

    def list_definitions(self, *, page_size: int = 0) -> list[DefinitionSummary]:
        """Returns the tenant's workflows ordered by name, fetching every page
        (``page_size`` per request; 0 means the server default). Needs
        ``definitions:read``."""
        size = _common.check_page_size(page_size)
        definitions: list[DefinitionSummary] = []
        token = ""
        while True:
            req = definition_pb2.ListDefinitionsRequest(page_size=size, page_token=token)
            resp = self._call(self._definitions.ListDefinitions, req, read=True)
            definitions.extend(DefinitionSummary.from_proto(d) for d in resp.definitions)
            token = resp.next_page_token
            if not token:
                return definitions

    def list_definition_versions(
        self, name: str, *, page_size: int = 0
    ) -> list[DefinitionVersion]:
        """Returns the versions of one workflow, newest first, fetching every page.
        Needs ``definitions:read``."""
        size = _common.check_page_size(page_size)
        versions: list[DefinitionVersion] = []
        token = ""
        while True:
            req = definition_pb2.ListDefinitionVersionsRequest(
                name=name, page_size=size, page_token=token
            )
            resp = self._call(self._definitions.ListDefinitionVersions, req, read=True)
            versions.extend(DefinitionVersion.from_proto(v) for v in resp.versions)
            token = resp.next_page_token
            if not token:
                return versions

    def delete_definition(self, name: str) -> None:
        """Deletes a workflow: it leaves listings and cannot be started, while executions
        already running continue; applying it again continues its version numbers.
        Needs ``definitions:write``."""
        req = definition_pb2.DeleteDefinitionRequest(name=name)
        self._call(self._definitions.DeleteDefinition, req, read=False)

    # -- secrets ---------------------------------------------------------------------

    def create_secret(self, name: str, type: str, fields: Mapping[str, str]) -> Secret:
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
        return Secret.from_proto(self._call(self._secrets.CreateSecret, req, read=False))

    def update_secret(self, name: str, fields: Mapping[str, str]) -> Secret:
        """Replaces all of a secret's fields (its type stays; the new fields must satisfy
        it) and returns its metadata. Needs ``secrets:write``."""
        req = _common.update_secret_request(name, fields)
        return Secret.from_proto(self._call(self._secrets.UpdateSecret, req, read=False))

    def get_secret(self, name: str) -> Secret:
        """Returns a secret's metadata: type, field names, key id, times. Needs
        ``secrets:read``. An unknown name (or another tenant's secret) raises
        :class:`errors.NotFound`."""
        req = secret_pb2.GetSecretRequest(name=name)
        return Secret.from_proto(self._call(self._secrets.GetSecret, req, read=True))

    def list_secrets(self, *, page_size: int = 0) -> list[Secret]:
        """Returns the tenant's secrets (metadata only) ordered by name, fetching every
        page (``page_size`` per request; 0 means the server default). Needs
        ``secrets:read``."""
        size = _common.check_page_size(page_size)
        secrets: list[Secret] = []
        token = ""
        while True:
            req = secret_pb2.ListSecretsRequest(page_size=size, page_token=token)
            resp = self._call(self._secrets.ListSecrets, req, read=True)
            secrets.extend(Secret.from_proto(s) for s in resp.secrets)
            token = resp.next_page_token
            if not token:
                return secrets

    def delete_secret(self, name: str) -> None:
        """Deletes a secret; steps naming it fail from then on. Needs ``secrets:write``."""
        req = secret_pb2.DeleteSecretRequest(name=name)
        self._call(self._secrets.DeleteSecret, req, read=False)

    def rotate_encryption_key(self, batch_size: int = 0) -> Rotation:
        """Re-encrypts every secret of every tenant still sealed with the daemon's
        ``MANTLE_ENCRYPTION_KEY_PREVIOUS`` under its ``MANTLE_ENCRYPTION_KEY``,
        ``batch_size`` secrets per transaction (0: the server default, 100). Needs
        ``tenants:admin``."""
        req = _common.rotate_request(batch_size)
        return Rotation.from_proto(self._call(self._secrets.RotateEncryptionKey, req, read=False))

    # -- triggers --------------------------------------------------------------------

    def list_triggers(self, workflow: str | None = None) -> list[Trigger]:
        """Returns the tenant's triggers (of ``workflow`` only, when given), ordered by
        workflow, then by key (``cron <schedule>``, ``webhook <path>``). Needs
        ``definitions:read``.

        Triggers are declared in workflow files (``triggers:``) and registered by
        :meth:`apply`; a trigger keeps its id while its workflow's file keeps it.
        """
        req = _common.list_triggers_request(workflow)
        resp = self._call(self._triggers.ListTriggers, req, read=True)
        return [Trigger.from_proto(t) for t in resp.triggers]

    def pause_trigger(self, id: str) -> Trigger:
        """Pauses a trigger: it starts no execution until :meth:`resume_trigger` (and a
        cron trigger does not catch up on the times it missed while paused). Returns the
        trigger (``paused`` is True). Needs ``definitions:write``.

        Raises:
            errors.NotFound: no such trigger (or another tenant's).
        """
        req = _common.trigger_request(trigger_pb2.PauseTriggerRequest, id)
        return Trigger.from_proto(self._call(self._triggers.PauseTrigger, req, read=False))

    def resume_trigger(self, id: str) -> Trigger:
        """Resumes a paused trigger and returns it. Needs ``definitions:write``.

        Raises:
            errors.NotFound: no such trigger (or another tenant's).
        """
        req = _common.trigger_request(trigger_pb2.ResumeTriggerRequest, id)
        return Trigger.from_proto(self._call(self._triggers.ResumeTrigger, req, read=False))

    def fire_trigger(self, id: str) -> Execution:
        """Starts one execution of the trigger's workflow now, paused or not, as the
        trigger would (a cron trigger's ``inputs`` included), and returns it at once; it
        runs in the background (see :meth:`wait` and :meth:`follow`). Its
        :attr:`Execution.trigger` is what the trigger's own fire gives it (``type``,
        ``trigger_id``, ...) with ``"manual": True``. Needs ``executions:write``.

        Raises:
            errors.NotFound: no such trigger (or another tenant's).
            errors.ResourceExhausted: refused as :meth:`start_execution` would be (the
                tenant's concurrency cap, say).
        """
        req = _common.trigger_request(trigger_pb2.FireTriggerRequest, id)
        resp = self._call(self._triggers.FireTrigger, req, read=False)
        return Execution.from_proto(resp.execution)

    # -- executions ------------------------------------------------------------------

    def start_execution(
        self,
        workflow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        version: int = 0,
        idempotency_key: str | None = None,
    ) -> Execution:
        """Starts an execution of a workflow and returns it at once; it runs in the
        background (see :meth:`wait`, :meth:`follow` and :meth:`watch`). Needs
        ``executions:write``.

        Args:
            workflow: The workflow's name.
            inputs: Input values by name, sent as JSON. The server checks them against
                the workflow's declared inputs (unknown names, types, required, enum) and
                applies defaults.
            version: The version to run; 0 for the latest.
            idempotency_key: Makes the start idempotent in the tenant: the same key with
                the same request returns the first execution (for 24 hours); with a
                different request it raises :class:`errors.FailedPrecondition`.

        Raises:
            errors.InvalidArgument: an input is unknown, missing or of the wrong type;
                the message names it.
            errors.NotFound: no such workflow or version.
        """
        req = _common.start_execution_request(workflow, inputs, version, idempotency_key)
        # With an idempotency key the start is safe to retry.
        return Execution.from_proto(
            self._call(self._executions.StartExecution, req, read=idempotency_key is not None)
        )

    def get_execution(self, id: str) -> Execution:
        """Returns one execution. Needs ``executions:read``. An unknown id (or another
        tenant's execution) raises :class:`errors.NotFound`."""
        req = execution_pb2.GetExecutionRequest(id=id)
        return Execution.from_proto(self._call(self._executions.GetExecution, req, read=True))

    def list_executions(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        view: str = "basic",
    ) -> list[Execution]:
        """Returns the tenant's executions, newest first, fetching every page. Needs
        ``executions:read``.

        Args:
            workflow: Only executions of this workflow.
            status: Only executions in this state, e.g. ``"failed"`` or ``"timed_out"``.
            created_after: Only executions started at or after this (aware) time.
            created_before: Only executions started before this (aware) time.
            page_size: Executions per request; 0 uses the server default (50), at most
                1000. A page may hold fewer (the server ends a page at 3 MiB); every page
                is fetched either way.
            view: ``"basic"`` (the default) or ``"full"``, case-insensitive. With
                ``"basic"`` the server leaves out each execution's inputs, outputs and
                trigger, so :attr:`Execution.inputs`, :attr:`Execution.outputs` and
                :attr:`Execution.trigger` are None; ``"full"`` returns them (as does
                :meth:`get_execution` for one execution).

        Raises:
            ValueError: ``view`` is neither ``"basic"`` nor ``"full"``, or another
                argument is invalid; the message names it.
        """
        return list(
            self.iter_executions(
                workflow=workflow,
                status=status,
                created_after=created_after,
                created_before=created_before,
                page_size=page_size,
                view=view,
            )
        )

    def iter_executions(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        view: str = "basic",
    ) -> Iterator[Execution]:
        """Like :meth:`list_executions`, but yields executions as pages arrive (the
        arguments, such as ``view``, are checked when iteration starts)."""
        token = ""
        while True:
            req = _common.list_executions_request(
                workflow, status, created_after, created_before, page_size, token, view
            )
            resp = self._call(self._executions.ListExecutions, req, read=True)
            for e in resp.executions:
                yield Execution.from_proto(e)
            token = resp.next_page_token
            if not token:
                return

    def cancel_execution(self, id: str) -> Execution:
        """Cancels an execution: running steps are stopped and it ends as ``cancelled``.
        A finished execution is returned unchanged. Needs ``executions:write``."""
        req = execution_pb2.CancelExecutionRequest(id=id)
        return Execution.from_proto(self._call(self._executions.CancelExecution, req, read=False))

    def cancel_executions(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> int:
        """Requests the cancellation of every unfinished execution the filter matches and
        returns how many (those already being cancelled are not counted again). It does
        not wait: each ends as ``cancelled`` as its driver stops it, normally within
        seconds (see :meth:`wait`). Needs ``executions:write``.

        Args:
            workflow: Only executions of this workflow.
            status: Only executions in this state: ``"pending"``, ``"queued"`` or
                ``"running"``.
            created_after: Only executions started at or after this (aware) time.
            created_before: Only executions started before this (aware) time.

        Raises:
            errors.InvalidArgument: no filter was given (at least one is required, so
                that nothing cancels every execution by accident), or a finished status.
            ValueError: an unknown status or a naive datetime (nothing is sent).
        """
        req = _common.cancel_executions_request(workflow, status, created_after, created_before)
        resp = self._call(self._executions.CancelExecutions, req, read=False)
        return resp.cancel_requested

    def delete_execution(self, id: str) -> None:
        """Deletes a finished execution with its step attempts, events, checkpoints,
        webhook deliveries and idempotency key. Needs ``executions:write``.

        Raises:
            errors.FailedPrecondition: it has not finished (cancel it first).
            errors.NotFound: no such execution (or another tenant's).
        """
        req = execution_pb2.DeleteExecutionRequest(id=id)
        self._call(self._executions.DeleteExecution, req, read=False)

    def delete_executions(self, *, ended_before: datetime, workflow: str | None = None) -> int:
        """Deletes the finished executions that ended before ``ended_before`` (of
        ``workflow`` only, when given), with everything that belongs to them, and returns
        how many. Unfinished executions are never deleted. Needs ``executions:write``.

        Raises:
            TypeError: ``ended_before`` is not a ``datetime`` (nothing is sent).
            ValueError: ``ended_before`` is a naive datetime (nothing is sent).
        """
        req = _common.delete_executions_request(ended_before, workflow)
        resp = self._call(self._executions.DeleteExecutions, req, read=False)
        return resp.deleted

    def retry_execution(self, id: str) -> Execution:
        """Continues a failed, cancelled or timed-out execution: completed steps keep
        their checkpointed outputs, failed and cancelled steps run again. Needs
        ``executions:write``."""
        req = execution_pb2.RetryExecutionRequest(id=id)
        return Execution.from_proto(self._call(self._executions.RetryExecution, req, read=False))

    def list_step_attempts(self, id: str, *, view: str = "full") -> list[StepAttempt]:
        """Returns every attempt of every step of an execution, in the order they
        started (attempts not started yet last), fetching every page (1000 attempts per
        request at most). Needs ``executions:read``.

        Args:
            view: ``"full"`` (the default) or ``"basic"``, case-insensitive. With
                ``"basic"`` the server leaves out each attempt's output, so
                :attr:`StepAttempt.output` is None.

        Raises:
            ValueError: ``view`` is neither ``"basic"`` nor ``"full"``.
            errors.NotFound: no such execution.
        """
        attempts: list[StepAttempt] = []
        token = ""
        while True:
            req = _common.list_step_attempts_request(id, token, view)
            resp = self._call(self._executions.ListStepAttempts, req, read=True)
            attempts.extend(StepAttempt.from_proto(a) for a in resp.attempts)
            token = resp.next_page_token
            if not token:
                return attempts

    def watch(self, id: str, after_seq: int = 0) -> Iterator[ExecutionEvent]:
        """Yields an execution's events in sequence order, from the beginning or after
        ``after_seq`` (an event's ``seq``), as they happen; the iterator ends after the
        event that finishes the execution. The stream has no deadline. Closing the
        iterator early cancels the call. Needs ``executions:read``.

        This is one raw stream: it does not survive a dropped connection or a daemon
        restart, and it may end at the terminal event of a run that is then retried.
        :meth:`follow` handles all that.

        Raises (while iterating):
            errors.NotFound: no such execution.
            errors.MantleError: the stream broke (e.g. :class:`errors.Unavailable`);
                resume with ``after_seq`` set to the last ``seq`` seen.
        """
        req = _common.watch_request(id, after_seq)
        call = self._executions.WatchExecution(req, metadata=self._settings.metadata)
        try:
            for msg in call:
                yield ExecutionEvent.from_proto(msg)
        except grpc.RpcError as e:
            raise self._settings.error(e) from e
        finally:
            call.cancel()

    def follow(
        self, id: str, after_seq: int = 0, timeout: float | None = None
    ) -> Iterator[ExecutionEvent]:
        """Yields each of an execution's events exactly once, in ``seq`` order, from after
        ``after_seq``, until the execution has finished; the last event is then normally
        the terminal ``execution_status`` event.

        Unlike :meth:`watch` (one stream), it carries on across dropped streams and daemon
        restarts: while the daemon is unreachable it reconnects with a growing pause
        (0.25 s doubling to 5 s), logging one WARNING on the ``mantle`` logger per outage
        (and one INFO line when the daemon answers again), and resumes after the last
        event it yielded. A terminal event of an execution that was retried meanwhile does
        not end it: it follows the next run. Once the execution has finished it also
        yields the events recorded after the last one it saw (a stream that dropped just
        before the end). Closing the iterator early cancels the stream. Needs
        ``executions:read``.

        Args:
            after_seq: Start after this event's ``seq`` (0: from the beginning).
            timeout: Seconds the execution may take to finish; None: no limit.

        Raises (while iterating):
            TimeoutError: the execution did not finish within ``timeout`` (also when the
                daemon stayed unreachable that long); ``timeout`` bounds everything,
                reconnecting included.
            errors.NotFound: no such execution; likewise errors.PermissionDenied and
                other answers that retrying would not change, at once.
            ValueError: at the call, for an invalid ``after_seq`` or ``timeout``.
        """
        follower = self._settings.follower(id, after_seq, timeout, drain=True)
        return self._follow_events(follower)

    def wait(self, id: str, timeout: float | None = None) -> Execution:
        """Waits until an execution has finished (completed, failed, cancelled or timed
        out) and returns it; check :attr:`Execution.status`.

        Follows the execution's events as :meth:`follow` does: dropped streams and daemon
        restarts (a deploy) are survived, reconnecting with a growing pause up to 5 s and
        logging one WARNING on the ``mantle`` logger per outage.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Raises:
            TimeoutError: the execution did not finish within ``timeout`` (also when the
                daemon stayed unreachable that long).
            errors.NotFound: no such execution (and other answers, such as
                errors.PermissionDenied, at once).
        """
        follower = self._settings.follower(id, 0, timeout, drain=False)
        for _ in self._follow(follower):
            pass
        return follower.result()

    def _follow_events(self, follower: _common.Follower) -> Iterator[ExecutionEvent]:
        events = self._follow(follower)
        try:
            for msg in events:
                yield ExecutionEvent.from_proto(msg)
        finally:
            events.close()

    def _follow(
        self, f: _common.Follower
    ) -> Generator[execution_pb2.ExecutionEvent, None, None]:
        """The loop of :meth:`follow` and :meth:`wait` (see :class:`_common.Follower`):
        yields each new event until the execution has finished (``f.execution``) and, for
        ``f.drain``, the events after the last one seen have been read."""
        f.start(time.monotonic)
        while True:
            before = f.last_seq
            call = self._executions.WatchExecution(
                f.watch_request(), timeout=f.watch_window(), metadata=self._settings.metadata
            )
            failure: grpc.RpcError | None = None
            try:
                for msg in call:
                    if not f.accept(msg):
                        continue
                    yield msg
                    # A retried execution runs again after a terminal event.
                    if not f.finished and _common.is_terminal_event(msg) and self._poll(f):
                        break
            except grpc.RpcError as e:
                failure = e
            finally:
                call.cancel()
            if failure is None:
                f.stream_ended()
            if not f.finished:
                expired = failure is not None and f.stream_failed(failure)
                if not self._poll(f):
                    # A watch that merely ran its course is renewed at once.
                    if f.unreachable or not expired:
                        time.sleep(f.pause())
                    continue
            elif failure is not None:  # catching up on the finished execution
                f.call_failed(failure)
                time.sleep(f.pause())
                continue
            elif f.last_seq == before:
                return  # caught up: nothing new
            if not f.drain:
                return

    def _poll(self, f: _common.Follower) -> bool:
        """GetExecution, once: True if the execution has finished; False if not, or if
        the daemon did not answer (transient failures are the loop's to retry)."""
        req = execution_pb2.GetExecutionRequest(id=f.id)
        try:
            resp = self._executions.GetExecution(
                req,
                timeout=f.call_timeout(self._settings.timeout),
                metadata=self._settings.metadata,
            )
        except grpc.RpcError as e:
            f.call_failed(e)
            return False
        return f.polled(resp)
