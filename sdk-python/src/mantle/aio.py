"""Asyncio client for the Mantle daemon (``grpc.aio``).

:class:`Client` has the same constructor and methods as :class:`mantle.Client`; the
methods are coroutines::

    async with mantle.aio.Client() as client:
        info = await client.server_info()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mantle import _common, errors
from mantle._config import DEFAULT_ADDRESS, Address
from mantle.types import ApiKey, CreatedApiKey, ServerInfo, Tenant
from mantle.v1 import system_pb2, system_pb2_grpc, tenant_pb2, tenant_pb2_grpc

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
            grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
        )
        self._system = system_pb2_grpc.SystemServiceStub(self._channel)
        self._tenants = tenant_pb2_grpc.TenantServiceStub(self._channel)
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
                raise errors.from_rpc_error(e) from e

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

    async def create_tenant(self, name: str, display_name: str | None = None) -> Tenant:
        """Creates a tenant (``tenants:admin``). Raises :class:`errors.AlreadyExists` for a
        taken name and :class:`errors.InvalidArgument` for an invalid one."""
        req = _common.create_tenant_request(name, display_name)
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

    async def update_tenant(self, name: str, *, display_name: str | None = None) -> Tenant:
        """Changes a tenant; None leaves a field unchanged, ``""`` clears it."""
        req = _common.update_tenant_request(name, display_name)
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
