"""Tests of the sync client against the real `mantle` daemon (see conftest.daemon)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

import mantle
from mantle import errors
from mantle.v1 import tenant_pb2

from .conftest import Daemon

pytestmark = pytest.mark.daemon

TOKEN_RE = re.compile(r"^mntl_([0-9a-f]{32})_([0-9a-f]{64})$")


def _near_now(dt: datetime | None, slack: timedelta = timedelta(minutes=2)) -> bool:
    assert dt is not None
    assert dt.utcoffset() == timedelta(0), "timestamps must be UTC-aware"
    return abs(datetime.now(timezone.utc) - dt) < slack


# -- health and server info ---------------------------------------------------------------


def test_health_serving(daemon: Daemon) -> None:
    # Health needs no token.
    with daemon.client(token="") as c:
        assert c.health() == "SERVING"
        assert c.health("mantle.v1.TenantService") == "SERVING"
        assert c.health("mantle.v1.SystemService") == "SERVING"


def test_health_unknown_service(op: mantle.Client) -> None:
    with pytest.raises(errors.NotFound):
        op.health("mantle.v1.NoSuchService")


def test_server_info_operator(op: mantle.Client) -> None:
    info = op.server_info()
    assert re.match(r"^\d+\.\d+\.\d+", info.version), info.version
    assert info.database == "sqlite"
    assert info.caller is not None
    assert info.caller.operator is True
    assert "tenants:admin" in info.caller.scopes
    assert info.caller.key_id != ""


def test_operator_tenant_header(daemon: Daemon, op: mantle.Client, unique: str) -> None:
    name = f"hdr-{unique}"
    op.create_tenant(name)
    with daemon.client(tenant=name) as c:
        info = c.server_info()
        assert info.caller is not None
        assert info.caller.operator is True
        assert info.caller.tenant == name


# -- tenants ------------------------------------------------------------------------------


def test_tenant_crud_round_trip(op: mantle.Client, unique: str) -> None:
    name = f"crud-{unique}"
    created = op.create_tenant(name, display_name="Round Trip Inc.")
    assert created.name == name
    assert created.display_name == "Round Trip Inc."
    assert re.match(r"^[0-9a-f-]{36}$", created.id), created.id
    assert _near_now(created.create_time)
    assert created.update_time is not None

    got = op.get_tenant(name)
    assert got == created

    updated = op.update_tenant(name, display_name="Renamed")
    assert updated.display_name == "Renamed"
    assert updated.id == created.id
    assert updated.create_time == created.create_time
    assert updated.update_time is not None and updated.update_time >= created.update_time
    assert op.get_tenant(name).display_name == "Renamed"

    # None leaves the display name alone; "" clears it.
    assert op.update_tenant(name).display_name == "Renamed"
    assert op.update_tenant(name, display_name="").display_name == ""

    assert name in [t.name for t in op.list_tenants()]

    assert op.delete_tenant(name) is None
    with pytest.raises(errors.NotFound):
        op.get_tenant(name)
    with pytest.raises(errors.NotFound):
        op.delete_tenant(name)
    assert name not in [t.name for t in op.list_tenants()]


def test_tenant_retention_round_trip(op: mantle.Client, unique: str) -> None:
    name = f"ret-{unique}"
    created = op.create_tenant(name, retention=timedelta(days=7))
    assert created.retention == timedelta(days=7)
    assert op.get_tenant(name).retention == timedelta(days=7)
    assert {t.name: t.retention for t in op.list_tenants()}[name] == timedelta(days=7)

    updated = op.update_tenant(name, retention=timedelta(hours=1, seconds=30))
    assert updated.retention == timedelta(seconds=3630)
    assert op.get_tenant(name).retention == timedelta(seconds=3630)
    # Changing another field leaves it alone; timedelta(0) clears it (the default).
    assert op.update_tenant(name, display_name="Kept").retention == timedelta(seconds=3630)
    cleared = op.update_tenant(name, retention=timedelta(0))
    assert cleared.retention is None and cleared.display_name == "Kept"
    assert op.get_tenant(name).retention is None

    # Fractional and negative retentions are refused before anything is sent.
    with pytest.raises(ValueError, match="whole seconds"):
        op.update_tenant(name, retention=timedelta(seconds=1.5))
    with pytest.raises(ValueError, match="negative"):
        op.update_tenant(name, retention=timedelta(days=-1))
    with pytest.raises(ValueError, match="whole seconds"):
        op.create_tenant(f"ret-frac-{unique}", retention=timedelta(milliseconds=10))
    with pytest.raises(errors.NotFound):
        op.get_tenant(f"ret-frac-{unique}")
    assert op.get_tenant(name).retention is None
    # A tenant created without one has none.
    assert op.create_tenant(f"ret-none-{unique}").retention is None


def test_create_duplicate_already_exists(op: mantle.Client, unique: str) -> None:
    name = f"dup-{unique}"
    op.create_tenant(name)
    with pytest.raises(errors.AlreadyExists) as exc:
        op.create_tenant(name)
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_default_tenant_exists_and_cannot_be_deleted(op: mantle.Client) -> None:
    assert op.get_tenant("default").name == "default"
    with pytest.raises(errors.FailedPrecondition):
        op.delete_tenant("default")
    assert op.get_tenant("default").name == "default"


def test_update_unknown_tenant_not_found(op: mantle.Client, unique: str) -> None:
    with pytest.raises(errors.NotFound):
        op.update_tenant(f"ghost-{unique}", display_name="x")


@pytest.mark.parametrize("bad", ["Bad_Name", "-leading", "trailing-", "9starts-with-digit", "a" * 64, ""])
def test_bad_name_invalid_argument(op: mantle.Client, bad: str) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        op.create_tenant(bad)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in exc.value.message, exc.value.message


def test_list_tenants_pagination(op: mantle.Client, unique: str) -> None:
    page_size = 3
    mine = [f"pg-{unique}-{i:02d}" for i in range(2 * page_size + 1)]
    for n in reversed(mine):
        op.create_tenant(n)

    # The raw API really pages: a full first page and a continuation token.
    first = op._tenants.ListTenants(
        tenant_pb2.ListTenantsRequest(page_size=page_size), metadata=op._settings.metadata
    )
    assert len(first.tenants) == page_size
    assert first.next_page_token != ""

    paged = op.list_tenants(page_size=page_size)
    names = [t.name for t in paged]
    assert len(names) > page_size
    assert len(names) == len(set(names)), "pages overlap"
    assert names == sorted(names), "tenants are ordered by name"
    assert "default" in names
    assert [n for n in names if n.startswith(f"pg-{unique}-")] == mine

    # Same result as one big page and as the iterator.
    assert [t.name for t in op.list_tenants(page_size=1000)] == names
    assert [t.name for t in op.iter_tenants(page_size=2)] == names


# -- API keys -----------------------------------------------------------------------------


def test_api_key_lifecycle(daemon: Daemon, op: mantle.Client, unique: str) -> None:
    tenant = f"keys-{unique}"
    op.create_tenant(tenant)
    created = op.create_api_key(tenant, ["executions:read", "definitions:read"], name="ci")
    key = created.api_key
    assert created.token.startswith(f"mntl_{key.id}_")
    assert key.tenant == tenant
    assert key.name == "ci"
    assert sorted(key.scopes) == ["definitions:read", "executions:read"]
    assert _near_now(key.create_time)
    assert key.expire_time is None
    assert key.revoke_time is None and not key.revoked

    with daemon.client(token=created.token) as tc:
        info = tc.server_info()
        assert info.caller is not None
        assert info.caller.tenant == tenant
        assert sorted(info.caller.scopes) == ["definitions:read", "executions:read"]
        assert info.caller.operator is False
        assert info.caller.key_id == key.id
        assert tc.get_tenant(tenant).name == tenant

        listed = op.list_api_keys(tenant)
        assert [k.id for k in listed] == [key.id]
        assert listed[0].scopes == key.scopes

        revoked = op.revoke_api_key(key.id)
        assert revoked.id == key.id
        assert revoked.revoked and _near_now(revoked.revoke_time)

        with pytest.raises(errors.Unauthenticated):
            tc.server_info()
        with pytest.raises(errors.Unauthenticated):
            tc.get_tenant(tenant)

    assert op.list_api_keys(tenant) == []
    with_revoked = op.list_api_keys(tenant, show_revoked=True)
    assert [k.id for k in with_revoked] == [key.id]
    assert with_revoked[0].revoke_time is not None


def test_api_key_token_format(op: mantle.Client, unique: str) -> None:
    """The contract: API key tokens are `mntl_<32 hex id>_<64 hex secret>`."""
    tenant = f"kfmt-{unique}"
    op.create_tenant(tenant)
    created = op.create_api_key(tenant, ["*"])
    m = TOKEN_RE.match(created.token)
    assert m, f"token {created.token[:40]}... is not mntl_<32 hex>_<64 hex>"
    assert m.group(1) == created.api_key.id


def test_list_api_keys_newest_first_and_paged(op: mantle.Client, unique: str) -> None:
    tenant = f"klist-{unique}"
    op.create_tenant(tenant)
    ids = [op.create_api_key(tenant, ["*"], name=f"k{i}").api_key.id for i in range(5)]
    keys = op.list_api_keys(tenant, page_size=2)
    assert sorted(k.id for k in keys) == sorted(ids)
    assert len(keys) == 5
    times = [k.create_time for k in keys]
    assert times == sorted(times, reverse=True)  # type: ignore[type-var]


def test_api_key_expire_time(op: mantle.Client, unique: str) -> None:
    tenant = f"exp-{unique}"
    op.create_tenant(tenant)
    when = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(microsecond=0)
    key = op.create_api_key(tenant, ["*"], expire_time=when).api_key
    assert key.expire_time is not None
    assert abs(key.expire_time - when) < timedelta(seconds=1)
    rel = op.create_api_key(tenant, ["*"], expire_time=timedelta(days=1)).api_key
    assert rel.expire_time is not None
    assert abs(rel.expire_time - (datetime.now(timezone.utc) + timedelta(days=1))) < timedelta(minutes=1)
    with pytest.raises(errors.InvalidArgument) as exc:
        op.create_api_key(tenant, ["*"], expire_time=datetime.now(timezone.utc) - timedelta(hours=1))
    assert "expire_time" in exc.value.message


def test_api_key_validation(op: mantle.Client, unique: str) -> None:
    tenant = f"kval-{unique}"
    op.create_tenant(tenant)
    with pytest.raises(errors.InvalidArgument) as exc:
        op.create_api_key(tenant, [])
    assert "scopes" in exc.value.message
    with pytest.raises(errors.InvalidArgument) as exc:
        op.create_api_key(tenant, ["no-such:scope"])
    assert "scopes" in exc.value.message
    with pytest.raises(errors.NotFound):
        op.create_api_key(f"ghost-{unique}", ["*"])
    with pytest.raises(errors.NotFound):
        op.revoke_api_key("0123456789abcdef")


def test_operator_key(daemon: Daemon, op: mantle.Client) -> None:
    created = op.create_api_key("", ["tenants:admin"], name="second-operator")
    assert created.api_key.tenant == "" and created.api_key.operator
    assert created.api_key.id in [k.id for k in op.list_api_keys("")]
    with daemon.client(token=created.token) as oc:
        info = oc.server_info()
        assert info.caller is not None and info.caller.operator is True
        assert info.caller.key_id == created.api_key.id
        assert "default" in [t.name for t in oc.list_tenants()]
    op.revoke_api_key(created.api_key.id)


# -- authorization ------------------------------------------------------------------------


def test_wrong_scope_permission_denied(daemon: Daemon, op: mantle.Client, unique: str) -> None:
    tenant = f"scope-{unique}"
    op.create_tenant(tenant)
    token = op.create_api_key(tenant, ["*"]).token
    with daemon.client(token=token) as tc:
        with pytest.raises(errors.PermissionDenied) as exc:
            tc.list_tenants()
        assert exc.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(errors.PermissionDenied):
            tc.create_tenant(f"nope-{unique}")
        with pytest.raises(errors.PermissionDenied):
            tc.create_api_key(tenant, ["*"])
    assert f"nope-{unique}" not in [t.name for t in op.list_tenants()]


def test_foreign_tenant_not_found(daemon: Daemon, op: mantle.Client, unique: str) -> None:
    a, b = f"ta-{unique}", f"tb-{unique}"
    op.create_tenant(a)
    op.create_tenant(b)
    token = op.create_api_key(a, ["executions:read"]).token
    with daemon.client(token=token) as tc:
        assert tc.get_tenant(a).name == a
        with pytest.raises(errors.NotFound):
            tc.get_tenant(b)
        # Indistinguishable from a tenant that does not exist.
        with pytest.raises(errors.NotFound):
            tc.get_tenant(f"ghost-{unique}")


def test_no_token_unauthenticated(daemon: Daemon, clean_env: Path) -> None:
    with mantle.Client(daemon.address) as c:
        assert c.has_token is False
        with pytest.raises(errors.Unauthenticated) as exc:
            c.server_info()
        assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(errors.Unauthenticated):
            c.list_tenants()


@pytest.mark.parametrize(
    "token", ["garbage", "mntl_0123456789abcdef_" + "0" * 64, "Bearer x"]
)
def test_bad_token_unauthenticated(daemon: Daemon, token: str) -> None:
    with daemon.client(token=token) as c:
        with pytest.raises(errors.Unauthenticated):
            c.server_info()


# -- token discovery ---------------------------------------------------------------------


def test_token_file_discovery(daemon: Daemon, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTLE_DATA_DIR", str(daemon.data_dir))
    port = daemon.address.rsplit(":", 1)[1]
    for address in (daemon.address, f"http://127.0.0.1:{port}", f"localhost:{port}"):
        with mantle.Client(address) as c:
            assert c.has_token
            info = c.server_info()
            assert info.caller is not None and info.caller.operator is True, address


def test_token_env_overrides_file(
    daemon: Daemon, op: mantle.Client, clean_env: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    tenant = f"envtok-{unique}"
    op.create_tenant(tenant)
    token = op.create_api_key(tenant, ["secrets:read"]).token
    monkeypatch.setenv("MANTLE_DATA_DIR", str(daemon.data_dir))
    monkeypatch.setenv("MANTLE_TOKEN", token)
    with mantle.Client(daemon.address) as c:
        info = c.server_info()
        assert info.caller is not None
        assert info.caller.tenant == tenant and info.caller.operator is False
