"""Secrets against the real `mantle` daemon (see conftest.daemon): create, update, get,
list, delete; type validation naming the field; metadata that never carries values;
isolation between tenants; the secrets:read / secrets:write scopes; key rotation; a
credential used by an http/request step and redacted from its output; asyncio."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import mantle
import mantle.aio
from mantle import errors

from .conftest import Daemon

pytestmark = pytest.mark.daemon

WAIT = 30.0

TOKEN = "sdk-test-token-7f3a9c"
USER = "sdk-user-alice"
PASSWORD = "sdk-pass-hunter22"


@pytest.fixture
def tenant(op: mantle.Client, unique: str) -> str:
    name = f"sec-{unique}"
    op.create_tenant(name)
    return name


@pytest.fixture
def tc(daemon: Daemon, tenant: str) -> Iterator[mantle.Client]:
    """The operator acting on a fresh tenant."""
    with daemon.client(tenant=tenant) as c:
        yield c


def _no_values(obj: object, *values: str) -> None:
    text = repr(obj) + json.dumps(
        dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else str(obj),  # type: ignore[arg-type]
        default=str,
    )
    for v in values:
        assert v not in text, f"a secret value shows in {text}"


# -- lifecycle ------------------------------------------------------------------------------


def test_create_get_list_update_delete(tc: mantle.Client) -> None:
    created = tc.create_secret("github", "basic", {"username": USER, "password": PASSWORD})
    assert created.name == "github" and created.type == "basic"
    assert created.field_names == ("password", "username")
    assert len(created.key_id) == 16 and all(c in "0123456789abcdef" for c in created.key_id)
    assert created.create_time is not None and created.update_time is not None
    _no_values(created, USER, PASSWORD)

    got = tc.get_secret("github")
    assert got == created
    _no_values(got, USER, PASSWORD)

    tc.create_secret("api", "bearer", {"token": TOKEN})
    listed = tc.list_secrets()
    assert [s.name for s in listed] == ["api", "github"]
    _no_values(listed, USER, PASSWORD, TOKEN)
    # Paging returns the same list.
    assert tc.list_secrets(page_size=1) == listed

    updated = tc.update_secret("github", {"username": USER, "password": "another-password"})
    assert updated.type == "basic" and updated.create_time == created.create_time
    assert updated.update_time is not None and created.update_time is not None
    assert updated.update_time >= created.update_time

    with pytest.raises(errors.AlreadyExists):
        tc.create_secret("api", "bearer", {"token": "other-token"})

    tc.delete_secret("github")
    with pytest.raises(errors.NotFound):
        tc.get_secret("github")
    with pytest.raises(errors.NotFound):
        tc.delete_secret("github")
    with pytest.raises(errors.NotFound):
        tc.update_secret("github", {"username": "u", "password": "p"})
    assert [s.name for s in tc.list_secrets()] == ["api"]


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type", "fields", "field"),
    [
        ("basic", {"username": USER}, "fields.password"),
        ("bearer", {"token": TOKEN, "extra": "extra-value-123"}, "fields.extra"),
        ("bearer", {"token": ""}, "fields.token"),
        ("header", {"name": "X-Api-Key"}, "fields.value"),
        ("postgres", {"dsn": "postgres://u:sdk-pg-pass@db/app"}, "fields.dsn"),
        ("openai", {"organization": "org-1"}, "fields.api_key"),
        ("baerer", {"token": TOKEN}, "type"),
        ("generic", {}, "fields"),
        ("generic", {"bad name": "v-123456"}, "fields.bad name"),
    ],
)
def test_type_validation_names_the_field(
    tc: mantle.Client, type: str, fields: dict[str, str], field: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as e:
        tc.create_secret("s1", type, fields)
    message = str(e.value)
    assert f"{field}:" in message, message
    for value in fields.values():
        if len(value) >= 4:
            assert value not in message, message
    with pytest.raises(errors.NotFound):
        tc.get_secret("s1")


def test_unknown_type_suggests_and_lists_types(tc: mantle.Client) -> None:
    with pytest.raises(errors.InvalidArgument) as e:
        tc.create_secret("s1", "baerer", {"token": TOKEN})
    assert 'did you mean "bearer"' in str(e.value)


def test_update_must_satisfy_the_type(tc: mantle.Client) -> None:
    tc.create_secret("api", "bearer", {"token": TOKEN})
    with pytest.raises(errors.InvalidArgument) as e:
        tc.update_secret("api", {"username": "sdk-user-x", "password": "sdk-pass-x"})
    assert "fields." in str(e.value)
    assert tc.get_secret("api").field_names == ("token",)


def test_names_are_checked(tc: mantle.Client) -> None:
    for bad in ["", "Upper", "1abc", "a" * 64, "has space"]:
        with pytest.raises(errors.InvalidArgument) as e:
            tc.create_secret(bad, "bearer", {"token": TOKEN})
        assert "name" in str(e.value)


def test_local_checks_never_show_values(tc: mantle.Client) -> None:
    with pytest.raises(TypeError) as e:
        tc.create_secret("api", "bearer", {"token": 123456789})  # type: ignore[dict-item]
    assert str(e.value) == "fields.token: expected a str value, got int"
    with pytest.raises(TypeError):
        tc.create_secret("api", "bearer", [("token", TOKEN)])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tc.rotate_encryption_key(batch_size=-1)


# -- isolation and scopes -------------------------------------------------------------------


def test_tenants_are_isolated(daemon: Daemon, op: mantle.Client, unique: str) -> None:
    a, b = f"sec-a-{unique}", f"sec-b-{unique}"
    op.create_tenant(a)
    op.create_tenant(b)
    key_a = op.create_api_key(a, ["secrets:read", "secrets:write"]).token
    key_b = op.create_api_key(b, ["secrets:read", "secrets:write"]).token
    with daemon.client(key_a) as ca, daemon.client(key_b) as cb:
        ca.create_secret("db", "postgres", {"url": "postgres://a:sdk-a-pass@db/a"})
        ca.create_secret("only-a", "bearer", {"token": TOKEN})
        with pytest.raises(errors.NotFound):
            cb.get_secret("only-a")
        with pytest.raises(errors.NotFound):
            cb.delete_secret("only-a")
        with pytest.raises(errors.NotFound):
            cb.update_secret("only-a", {"token": "stolen-token"})
        assert cb.list_secrets() == []
        # The same name is free in another tenant.
        cb.create_secret("db", "generic", {"dsn": "sdk-b-dsn"})
        assert cb.get_secret("db").type == "generic"
        assert ca.get_secret("db").type == "postgres"
    # A tenant key cannot reach another tenant through x-mantle-tenant.
    with daemon.client(key_a, tenant=b) as sneaky, pytest.raises(errors.PermissionDenied):
        sneaky.list_secrets()
    # The operator acts on the tenant it names.
    with daemon.client(tenant=b) as ob:
        assert [s.name for s in ob.list_secrets()] == ["db"]


def test_scopes(daemon: Daemon, op: mantle.Client, tenant: str) -> None:
    reader = op.create_api_key(tenant, ["secrets:read"]).token
    writer = op.create_api_key(tenant, ["secrets:write"]).token
    other = op.create_api_key(tenant, ["executions:read", "definitions:write"]).token
    everything = op.create_api_key(tenant, ["*"]).token
    with (
        daemon.client(reader) as r,
        daemon.client(writer) as w,
        daemon.client(other) as o,
        daemon.client(everything) as star,
    ):
        w.create_secret("api", "bearer", {"token": TOKEN})
        w.update_secret("api", {"token": "new-token-value"})
        assert r.get_secret("api").name == "api"
        assert [s.name for s in r.list_secrets()] == ["api"]
        with pytest.raises(errors.PermissionDenied) as e:
            r.create_secret("x", "bearer", {"token": TOKEN})
        assert "secrets:write" in str(e.value)
        with pytest.raises(errors.PermissionDenied):
            r.update_secret("api", {"token": TOKEN})
        with pytest.raises(errors.PermissionDenied):
            r.delete_secret("api")
        with pytest.raises(errors.PermissionDenied) as e:
            w.get_secret("api")
        assert "secrets:read" in str(e.value)
        with pytest.raises(errors.PermissionDenied):
            w.list_secrets()
        for call in (lambda: o.get_secret("api"), lambda: o.list_secrets()):
            with pytest.raises(errors.PermissionDenied):
                call()
        with pytest.raises(errors.PermissionDenied):
            o.create_secret("x", "bearer", {"token": TOKEN})
        # Rotation is an operator action, even for a `*` key.
        for c in (r, w, star):
            with pytest.raises(errors.PermissionDenied) as e:
                c.rotate_encryption_key()
            assert "tenants:admin" in str(e.value)
        star.delete_secret("api")
    with daemon.client("") as anonymous, pytest.raises(errors.Unauthenticated):
        anonymous.list_secrets()


def test_rotation_with_one_key_has_nothing_to_do(op: mantle.Client, tc: mantle.Client) -> None:
    secret = tc.create_secret("api", "bearer", {"token": TOKEN})
    rotation = op.rotate_encryption_key(batch_size=10)
    assert rotation == mantle.Rotation(key_id=secret.key_id, rotated=0, remaining=0)
    assert op.rotate_encryption_key().remaining == 0


# -- use in a step --------------------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    """Answers every GET with the request headers as JSON."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        body = json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


USE_CREDENTIAL = """\
name: {name}
steps:
  - name: call
    action: http/request
    credential: {credential}
    params:
      url: "{base}/echo"
  - name: report
    action: core/log
    params:
      message: "auth={{{{ steps.call.output.body.headers.authorization }}}}"
outputs:
  auth: steps.call.output.body.headers.authorization
"""


def test_a_step_uses_the_credential_and_its_values_are_redacted(
    tc: mantle.Client, echo: str
) -> None:
    tc.create_secret("github", "basic", {"username": USER, "password": PASSWORD})
    tc.apply(USE_CREDENTIAL.format(name="use-basic", credential="github", base=echo))
    done = tc.wait(tc.start_execution("use-basic").id, timeout=WAIT)
    assert done.status == "completed", done.error
    assert done.outputs == {"auth": "Basic ***"}
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    everything = repr(done) + repr(tc.list_step_attempts(done.id)) + repr(list(tc.watch(done.id)))
    for value in (USER, PASSWORD, encoded):
        assert value not in everything
    assert "auth=Basic ***" in everything

    tc.apply(USE_CREDENTIAL.format(name="use-missing", credential="nope", base=echo))
    failed = tc.wait(tc.start_execution("use-missing").id, timeout=WAIT)
    assert failed.status == "failed"
    assert 'credential "nope" not found' in failed.error


# -- asyncio --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aio_secrets(daemon: Daemon, tenant: str) -> None:
    async with daemon.aio_client(tenant=tenant) as c:
        created = await c.create_secret("api", "header", {"name": "X-Api-Key", "value": TOKEN})
        assert created.field_names == ("name", "value")
        assert await c.get_secret("api") == created
        assert [s.name for s in await c.list_secrets()] == ["api"]
        updated = await c.update_secret("api", {"name": "X-Api-Key", "value": "aio-new-value"})
        assert updated.key_id == created.key_id
        with pytest.raises(errors.InvalidArgument) as e:
            await c.create_secret("b", "basic", {"username": USER})
        assert "fields.password" in str(e.value)
        rotation = await c.rotate_encryption_key()
        assert rotation.key_id == created.key_id and rotation.remaining == 0
        await c.delete_secret("api")
        assert await c.list_secrets() == []
        _no_values(created, TOKEN)
