"""Tests of mantle.aio.Client against the real `mantle` daemon."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest

import mantle
import mantle.aio
from mantle import errors

from .conftest import Daemon

pytestmark = [pytest.mark.daemon, pytest.mark.asyncio]


async def test_aio_health_and_server_info(daemon: Daemon) -> None:
    async with daemon.aio_client() as c:
        assert await c.health() == "SERVING"
        assert await c.health("mantle.v1.TenantService") == "SERVING"
        info = await c.server_info()
        assert info.database == "sqlite"
        assert info.caller is not None and info.caller.operator is True
        assert "tenants:admin" in info.caller.scopes


async def test_aio_tenant_crud(daemon: Daemon, unique: str) -> None:
    name = f"aio-{unique}"
    async with daemon.aio_client() as c:
        created = await c.create_tenant(name, display_name="Async")
        assert created.name == name and created.display_name == "Async"
        assert created.create_time is not None and created.create_time.utcoffset() == timedelta(0)
        assert await c.get_tenant(name) == created
        updated = await c.update_tenant(name, display_name="Async 2")
        assert updated.display_name == "Async 2" and updated.retention is None
        kept = await c.update_tenant(name, retention=timedelta(days=3))
        assert kept.retention == timedelta(days=3)
        assert (await c.get_tenant(name)).retention == timedelta(days=3)
        with pytest.raises(ValueError, match="whole seconds"):
            await c.update_tenant(name, retention=timedelta(seconds=0.5))
        assert (await c.update_tenant(name, retention=timedelta(0))).retention is None
        with pytest.raises(errors.AlreadyExists):
            await c.create_tenant(name)
        await c.delete_tenant(name)
        with pytest.raises(errors.NotFound) as exc:
            await c.get_tenant(name)
        assert exc.value.code == grpc.StatusCode.NOT_FOUND


async def test_aio_list_pagination(daemon: Daemon, unique: str) -> None:
    mine = [f"apg-{unique}-{i}" for i in range(5)]
    async with daemon.aio_client() as c:
        for n in mine:
            await c.create_tenant(n)
        names = [t.name for t in await c.list_tenants(page_size=2)]
        assert len(names) == len(set(names)) > 2
        assert names == sorted(names)
        assert [n for n in names if n.startswith(f"apg-{unique}-")] == mine
        assert [t.name async for t in c.iter_tenants(page_size=1)] == names


async def test_aio_api_key_auth_and_revoke(daemon: Daemon, unique: str) -> None:
    tenant = f"akey-{unique}"
    async with daemon.aio_client() as op:
        await op.create_tenant(tenant)
        created = await op.create_api_key(tenant, ["definitions:write"], name="async")
        assert created.token.startswith(f"mntl_{created.api_key.id}_")
        async with daemon.aio_client(token=created.token) as tc:
            info = await tc.server_info()
            assert info.caller is not None
            assert info.caller.tenant == tenant
            assert info.caller.scopes == ("definitions:write",)
            with pytest.raises(errors.PermissionDenied):
                await tc.list_tenants()
            with pytest.raises(errors.NotFound):
                await tc.get_tenant("default")
            assert [k.id for k in await op.list_api_keys(tenant)] == [created.api_key.id]
            revoked = await op.revoke_api_key(created.api_key.id)
            assert revoked.revoke_time is not None
            with pytest.raises(errors.Unauthenticated):
                await tc.server_info()


async def test_aio_errors(daemon: Daemon, clean_env: Path) -> None:
    async with daemon.aio_client() as op:
        with pytest.raises(errors.InvalidArgument) as exc:
            await op.create_tenant("Not_A_Label")
        assert "name" in exc.value.message
        with pytest.raises(errors.FailedPrecondition):
            await op.delete_tenant("default")
    async with mantle.aio.Client(daemon.address) as anon:
        assert not anon.has_token
        with pytest.raises(errors.Unauthenticated):
            await anon.server_info()


async def test_aio_token_file_discovery(
    daemon: Daemon, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTLE_DATA_DIR", str(daemon.data_dir))
    async with mantle.aio.Client(f"http://{daemon.address}") as c:
        info = await c.server_info()
        assert info.caller is not None and info.caller.operator is True
