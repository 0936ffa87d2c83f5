"""Unit tests that need no daemon: address parsing, local detection, token discovery,
error mapping, retry policy and protobuf conversion."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from concurrent import futures
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

import mantle
import mantle.aio
from mantle import _common, _config, errors
from mantle.types import ApiKey, CreatedApiKey, ServerInfo, Tenant, to_timestamp
from mantle.v1 import common_pb2, system_pb2, tenant_pb2, tenant_pb2_grpc


# -- address parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "host", "port", "tls", "target"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, False, "127.0.0.1:8080"),
        ("localhost:9", "localhost", 9, False, "localhost:9"),
        ("http://mantle.example.com:8080", "mantle.example.com", 8080, False, "mantle.example.com:8080"),
        ("https://mantle.example.com:8443", "mantle.example.com", 8443, True, "mantle.example.com:8443"),
        ("https://mantle.example.com", "mantle.example.com", 443, True, "mantle.example.com:443"),
        ("http://mantle.example.com/", "mantle.example.com", 80, False, "mantle.example.com:80"),
        ("HTTPS://Host:1", "host", 1, True, "host:1"),
        ("[::1]:8080", "::1", 8080, False, "[::1]:8080"),
        ("https://[2001:db8::1]:443", "2001:db8::1", 443, True, "[2001:db8::1]:443"),
        ("  10.0.0.5:50051  ", "10.0.0.5", 50051, False, "10.0.0.5:50051"),
    ],
)
def test_parse_address(address: str, host: str, port: int, tls: bool, target: str) -> None:
    a = mantle.parse_address(address)
    assert (a.host, a.port, a.tls, a.target) == (host, port, tls, target)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "   ",
        "localhost",  # bare host needs a port
        "grpc://host:1",
        "ftp://host:21",
        "host:0",
        "host:70000",
        "host:port",
        "http://host:1/path",
        "https://user:pw@host:1",
        "::1:8080",  # IPv6 without brackets
        "http://",
    ],
)
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError, match="address"):
        mantle.parse_address(address)


def test_client_rejects_bad_address() -> None:
    with pytest.raises(ValueError, match="address"):
        mantle.Client("nonsense")


def test_client_rejects_bad_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        mantle.Client("127.0.0.1:1", token="t", timeout=0)


# -- local address detection -------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.1.2.3", "127.255.255.254", "::1", "[::1]",
     "::ffff:127.0.0.1"],
)
def test_local_hosts(host: str) -> None:
    assert mantle.is_local_host(host) is True


@pytest.mark.parametrize(
    "host",
    ["10.0.0.1", "128.0.0.1", "0.0.0.0", "::", "::2", "192.168.1.1", "example.com",
     "localhost.example.com", "mylocalhost", "126.255.255.255", "::ffff:10.0.0.1"],
)
def test_non_local_hosts(host: str) -> None:
    assert mantle.is_local_host(host) is False


# -- token discovery ---------------------------------------------------------------------

LOCAL = _config.parse_address("127.0.0.1:8080")
REMOTE = _config.parse_address("https://mantle.example.com")


def _write_token(data_dir: Path, token: str, address: str | None = "127.0.0.1:8080") -> None:
    """Writes an operator token file as the daemon does: the token, then its address."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [token] if address is None else [token, f"address={address}"]
    (data_dir / "operator-token").write_text("\n".join(lines) + "\n")


def test_data_dir_precedence(tmp_path: Path) -> None:
    assert _config.data_dir({"MANTLE_DATA_DIR": "/a", "XDG_DATA_HOME": "/x", "HOME": "/h"}) == Path("/a")
    assert _config.data_dir({"XDG_DATA_HOME": "/x", "HOME": "/h"}) == Path("/x/mantle")
    assert _config.data_dir({"HOME": "/h"}) == Path("/h/.local/share/mantle")
    assert _config.data_dir({"MANTLE_DATA_DIR": "", "XDG_DATA_HOME": "", "HOME": "/h"}) == Path(
        "/h/.local/share/mantle"
    )


def test_token_explicit_wins(tmp_path: Path) -> None:
    _write_token(tmp_path, "from-file")
    env = {"MANTLE_TOKEN": "from-env", "MANTLE_DATA_DIR": str(tmp_path)}
    assert _config.resolve_token("explicit", LOCAL, env) == "explicit"
    resolved = _config.resolve(" explicit ", LOCAL, env)
    assert resolved.token == "explicit"
    assert resolved.source == "the token given with the token argument"
    assert "explicit" not in repr(resolved)


def test_token_empty_explicit_means_none(tmp_path: Path) -> None:
    _write_token(tmp_path, "from-file")
    env = {"MANTLE_TOKEN": "from-env", "MANTLE_DATA_DIR": str(tmp_path)}
    assert _config.resolve_token("", LOCAL, env) is None
    assert _config.resolve(" ", LOCAL, env).source == (
        "no token (neither the token argument nor MANTLE_TOKEN is set, "
        "and the token argument is empty)"
    )


def test_token_env_before_file(tmp_path: Path) -> None:
    _write_token(tmp_path, "from-file")
    env = {"MANTLE_TOKEN": "from-env", "MANTLE_DATA_DIR": str(tmp_path)}
    assert _config.resolve_token(None, LOCAL, env) == "from-env"
    assert _config.resolve_token(None, REMOTE, env) == "from-env"
    assert _config.resolve(None, LOCAL, env).source == "the token in MANTLE_TOKEN"


def test_token_file_first_line_is_the_token(tmp_path: Path) -> None:
    # What the daemon writes: the token, then the address it listens on.
    (tmp_path / "operator-token").write_text("  mntl_0123_abcd \naddress=127.0.0.1:8080\n")
    env = {"MANTLE_DATA_DIR": str(tmp_path)}
    resolved = _config.resolve(None, LOCAL, env)
    assert resolved.token == "mntl_0123_abcd"
    assert resolved.source == (
        f"the operator token of the daemon at 127.0.0.1:8080, from {tmp_path / 'operator-token'}"
    )
    assert "mntl_0123_abcd" not in repr(resolved)
    # The address line may come first; blank lines do not count; the first other line is
    # the token.
    (tmp_path / "operator-token").write_text("\naddress=127.0.0.1:8080\n\nsecret\nsecond\n")
    file = _config.read_operator_token(tmp_path)
    assert file is not None and file.token == "secret"
    assert file.address == _config.parse_socket_address("127.0.0.1:8080")
    assert str(file.address) == "127.0.0.1:8080" and "secret" not in repr(file)
    assert _config.resolve_token(None, LOCAL, env) == "secret"


@pytest.mark.parametrize(
    ("recorded", "target", "sent"),
    [
        # The same IP address and port.
        ("127.0.0.1:8080", "127.0.0.1:8080", True),
        ("127.0.0.1:8080", "http://127.0.0.1:8080", True),
        ("192.168.1.5:8080", "192.168.1.5:8080", True),
        ("[2001:db8::1]:8080", "[2001:db8::1]:8080", True),
        ("0.0.0.0:8080", "0.0.0.0:8080", True),
        # Loopback hosts reach a daemon on loopback or on every interface.
        ("127.0.0.1:8080", "localhost:8080", True),
        ("127.0.0.1:8080", "LOCALHOST.:8080", True),
        ("127.0.0.1:8080", "[::1]:8080", True),
        ("127.0.0.1:8080", "127.0.0.2:8080", True),
        ("127.0.0.1:8080", "[::ffff:127.0.0.1]:8080", True),
        ("[::1]:8080", "127.0.0.1:8080", True),
        ("[::1]:8080", "localhost:8080", True),
        ("0.0.0.0:8080", "localhost:8080", True),
        ("0.0.0.0:8080", "127.0.0.1:8080", True),
        ("[::]:8080", "[::1]:8080", True),
        ("[::]:8080", "localhost:8080", True),
        # Another port is another daemon.
        ("127.0.0.1:8080", "127.0.0.1:9090", False),
        ("127.0.0.1:8080", "localhost:9090", False),
        ("0.0.0.0:8080", "localhost:9090", False),
        # Listening on one interface: that address only.
        ("192.168.1.5:8080", "127.0.0.1:8080", False),
        ("192.168.1.5:8080", "localhost:8080", False),
        ("127.0.0.1:8080", "192.168.1.5:8080", False),
        ("127.0.0.1:8080", "10.0.0.5:8080", False),
        # A remote host never gets it, not even from a daemon on every interface.
        ("0.0.0.0:8080", "mantle.example.com:8080", False),
        ("0.0.0.0:8080", "10.0.0.5:8080", False),
        ("127.0.0.1:443", "https://mantle.example.com", False),
    ],
)
def test_token_file_only_for_the_daemon_that_wrote_it(
    tmp_path: Path, recorded: str, target: str, sent: bool
) -> None:
    _write_token(tmp_path, "tok", recorded)
    env = {"MANTLE_DATA_DIR": str(tmp_path)}
    address = _config.parse_address(target)
    assert _config.resolve_token(None, address, env) == ("tok" if sent else None)
    source = _config.resolve(None, address, env).source
    if sent:
        assert source.startswith(f"the operator token of the daemon at {recorded}, from ")
    else:
        assert source == (
            "no token (neither the token argument nor MANTLE_TOKEN is set, and "
            f"{tmp_path / 'operator-token'} is the operator token of the daemon at "
            f"{recorded}, not of {address.uri})"
        )


def test_token_file_without_address_is_not_sent(tmp_path: Path) -> None:
    # A file of a daemon older than the address line: sent nowhere (as the Rust client).
    _write_token(tmp_path, "tok", address=None)
    env = {"MANTLE_DATA_DIR": str(tmp_path)}
    assert _config.resolve_token(None, LOCAL, env) is None
    assert _config.resolve(None, LOCAL, env).source.endswith(
        f"and {tmp_path / 'operator-token'} records no daemon address (a daemon start rewrites it))"
    )


@pytest.mark.parametrize(
    "value", ["nowhere", "localhost:8080", "127.0.0.1", "::1:8080", "[127.0.0.1]:8080", "1.2.3.4:x",
              "127.0.0.1:70000", "[::1%lo]:8080"]
)
def test_token_file_with_a_bad_address_is_not_sent(tmp_path: Path, value: str) -> None:
    assert _config.parse_socket_address(value) is None
    _write_token(tmp_path, "tok", value)
    env = {"MANTLE_DATA_DIR": str(tmp_path)}
    assert _config.resolve_token(None, LOCAL, env) is None
    assert _config.resolve(None, LOCAL, env).source.endswith(
        f"and {tmp_path / 'operator-token'}: address={value} is not an IP address and port)"
    )


def test_token_file_xdg(tmp_path: Path) -> None:
    _write_token(tmp_path / "mantle", "xdg-token", "[::1]:8080")
    env = {"XDG_DATA_HOME": str(tmp_path), "HOME": "/nonexistent"}
    assert _config.resolve_token(None, LOCAL, env) == "xdg-token"


def test_token_file_home(tmp_path: Path) -> None:
    _write_token(tmp_path / ".local" / "share" / "mantle", "home-token")
    assert _config.resolve_token(None, LOCAL, {"HOME": str(tmp_path)}) == "home-token"


def test_token_missing_file(tmp_path: Path) -> None:
    assert _config.resolve_token(None, LOCAL, {"MANTLE_DATA_DIR": str(tmp_path / "nope")}) is None
    assert _config.resolve(None, LOCAL, {"MANTLE_DATA_DIR": str(tmp_path)}).source == (
        "no token (neither the token argument nor MANTLE_TOKEN is set)"
    )
    (tmp_path / "operator-token").write_text("\n")
    assert _config.resolve_token(None, LOCAL, {"MANTLE_DATA_DIR": str(tmp_path)}) is None


def test_client_reads_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MANTLE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MANTLE_TOKEN", raising=False)
    with mantle.Client("127.0.0.1:1") as c:
        assert c.has_token is False
    _write_token(tmp_path, "tok", "127.0.0.1:1")
    with mantle.Client("127.0.0.1:1") as c:
        assert c.has_token is True
        assert c._settings.metadata == (("authorization", "Bearer tok"),)
    with mantle.Client("10.0.0.1:1") as c:
        assert c.has_token is False
    with mantle.Client("127.0.0.1:2") as c:
        assert c.has_token is False


def test_refused_token_errors_name_the_source() -> None:
    source = "the token in MANTLE_TOKEN"
    for code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        err = errors.from_rpc_error(FakeRpcError(code, "invalid token"), source)
        assert err.token_source == source
        assert str(err) == f"{code.name}: invalid token (sent the token in MANTLE_TOKEN)"
        assert err.message == "invalid token"
    other = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone"), source)
    assert other.token_source is None and str(other) == "NOT_FOUND: gone"
    bare = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "x"))
    assert bare.token_source is None


def test_refused_token_errors_of_both_clients_name_the_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MANTLE_TOKEN", raising=False)
    monkeypatch.setenv("MANTLE_DATA_DIR", str(tmp_path))
    _write_token(tmp_path, "tok", "127.0.0.1:1")
    expected = (
        "UNAUTHENTICATED: try again (sent the operator token of the daemon at 127.0.0.1:1, "
        f"from {tmp_path / 'operator-token'})"
    )
    with mantle.Client("127.0.0.1:1") as c:
        with pytest.raises(errors.Unauthenticated) as exc:
            c._call(FakeMethod([grpc.StatusCode.UNAUTHENTICATED]), "req", read=True)
        assert str(exc.value) == expected
        # Calls sent without a token (health checks) name none.
        with pytest.raises(errors.PermissionDenied) as denied:
            c._call(FakeMethod([grpc.StatusCode.PERMISSION_DENIED]), "req", read=True, auth=False)
        assert denied.value.token_source is None

    async def aio() -> None:
        async with mantle.aio.Client("localhost:1") as c:

            async def refused(request: Any, *, timeout: float | None, metadata: Any) -> Any:
                raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "try again")

            with pytest.raises(errors.Unauthenticated) as exc:
                await c._call(refused, "req", read=True)
            assert str(exc.value) == expected

    asyncio.run(aio())


# -- error mapping -----------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None = "boom") -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, errors.Internal),
    ],
)
def test_error_mapping(code: grpc.StatusCode, cls: type[errors.MantleError]) -> None:
    err = errors.from_rpc_error(FakeRpcError(code, "name: must be a DNS label"))
    assert type(err) is cls
    assert isinstance(err, errors.MantleError)
    assert err.code == code
    assert err.message == "name: must be a DNS label"
    assert str(err) == f"{code.name}: name: must be a DNS label"


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED,
     grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.OUT_OF_RANGE],
)
def test_error_mapping_other_codes_use_base(code: grpc.StatusCode) -> None:
    err = errors.from_rpc_error(FakeRpcError(code))
    assert type(err) is errors.MantleError
    assert err.code == code


def test_error_mapping_without_details() -> None:
    err = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, None))
    assert err.message == ""
    assert str(err) == "NOT_FOUND"
    bare = errors.from_rpc_error(grpc.RpcError())
    assert bare.code == grpc.StatusCode.UNKNOWN


def test_error_classes_distinct() -> None:
    classes = set(errors._BY_CODE.values())
    assert len(classes) == len(errors._BY_CODE) == 10
    assert mantle.MantleError is errors.MantleError


# -- retry policy ------------------------------------------------------------------------


def test_should_retry() -> None:
    U, D, N = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND
    assert _common.should_retry(U, read=False, attempt=1)
    assert _common.should_retry(U, read=True, attempt=2)
    assert not _common.should_retry(U, read=True, attempt=3)
    assert _common.should_retry(D, read=True, attempt=1)
    assert not _common.should_retry(D, read=False, attempt=1)
    assert not _common.should_retry(N, read=True, attempt=1)
    assert not _common.should_retry(grpc.StatusCode.INTERNAL, read=True, attempt=1)


def test_backoff_small_and_growing() -> None:
    for _ in range(50):
        d1, d2 = _common.backoff_delay(1), _common.backoff_delay(2)
        assert 0.1 <= d1 <= 0.125
        assert 0.2 <= d2 <= 0.25


class FakeMethod:
    """Stands in for a grpc multi-callable: fails with the given codes, then answers."""

    def __init__(self, failures: list[grpc.StatusCode], response: Any = "ok") -> None:
        self.failures = list(failures)
        self.response = response
        self.calls: list[dict[str, Any]] = []

    def __call__(self, request: Any, *, timeout: float | None, metadata: Any) -> Any:
        self.calls.append({"request": request, "timeout": timeout, "metadata": metadata})
        if self.failures:
            raise FakeRpcError(self.failures.pop(0), "try again")
        return self.response


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "backoff_delay", lambda attempt: 0.0)


U = grpc.StatusCode.UNAVAILABLE
D = grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.usefixtures("no_sleep")
def test_sync_retry_then_success() -> None:
    with mantle.Client("127.0.0.1:1", token="tok", tenant="acme", timeout=5) as c:
        m = FakeMethod([U, U])
        assert c._call(m, "req", read=False) == "ok"
        assert len(m.calls) == 3
        assert m.calls[0]["timeout"] == 5.0
        assert m.calls[0]["metadata"] == (
            ("authorization", "Bearer tok"),
            ("x-mantle-tenant", "acme"),
        )


@pytest.mark.usefixtures("no_sleep")
def test_sync_retry_gives_up_after_three() -> None:
    with mantle.Client("127.0.0.1:1", token="tok") as c:
        m = FakeMethod([U, U, U, U])
        with pytest.raises(errors.Unavailable) as exc:
            c._call(m, "req", read=True)
        assert len(m.calls) == 3
        assert exc.value.message == "try again"


@pytest.mark.usefixtures("no_sleep")
def test_sync_deadline_retried_only_for_reads() -> None:
    with mantle.Client("127.0.0.1:1", token="tok") as c:
        write = FakeMethod([D])
        with pytest.raises(errors.DeadlineExceeded):
            c._call(write, "req", read=False)
        assert len(write.calls) == 1
        read = FakeMethod([D])
        assert c._call(read, "req", read=True) == "ok"
        assert len(read.calls) == 2


@pytest.mark.usefixtures("no_sleep")
def test_sync_other_errors_not_retried() -> None:
    with mantle.Client("127.0.0.1:1", token="tok") as c:
        m = FakeMethod([grpc.StatusCode.NOT_FOUND])
        with pytest.raises(errors.NotFound):
            c._call(m, "req", read=True)
        assert len(m.calls) == 1
        unauth = FakeMethod([], response="x")
        c._call(unauth, "req", read=True, auth=False)
        assert unauth.calls[0]["metadata"] == ()


class FakeAsyncMethod(FakeMethod):
    async def __call__(self, request: Any, *, timeout: float | None, metadata: Any) -> Any:  # type: ignore[override]
        return FakeMethod.__call__(self, request, timeout=timeout, metadata=metadata)


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_sleep")
async def test_aio_retry() -> None:
    async with mantle.aio.Client("127.0.0.1:1", token="tok") as c:
        m = FakeAsyncMethod([U, U])
        assert await c._call(m, "req", read=False) == "ok"
        assert len(m.calls) == 3
        m = FakeAsyncMethod([U, U, U])
        with pytest.raises(errors.Unavailable):
            await c._call(m, "req", read=False)
        assert len(m.calls) == 3
        m = FakeAsyncMethod([D])
        with pytest.raises(errors.DeadlineExceeded):
            await c._call(m, "req", read=False)
        assert len(m.calls) == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_daemon_raises_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []
    monkeypatch.setattr(_common, "backoff_delay", lambda a: attempts.append(a) or 0.0)
    with mantle.Client(f"127.0.0.1:{_free_port()}", token="tok", timeout=5) as c:
        with pytest.raises(errors.Unavailable):
            c.server_info()
    assert attempts == [1, 2]  # three attempts, two backoffs


@pytest.mark.asyncio
async def test_aio_unreachable_daemon_raises_unavailable() -> None:
    async with mantle.aio.Client(f"127.0.0.1:{_free_port()}", token="tok", timeout=5) as c:
        with pytest.raises(errors.Unavailable):
            await c.health()


# -- conversions -------------------------------------------------------------------------


def _ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def test_tenant_from_proto() -> None:
    msg = tenant_pb2.Tenant(name="acme", id="u-1", display_name="ACME", create_time=_ts(1_700_000_000, 500_000_000))
    t = Tenant.from_proto(msg)
    assert t.name == "acme" and t.id == "u-1" and t.display_name == "ACME"
    assert t.create_time == datetime(2023, 11, 14, 22, 13, 20, 500_000, tzinfo=timezone.utc)
    assert t.create_time.tzinfo is not None and t.create_time.utcoffset() == timedelta(0)
    assert t.update_time is None
    assert t.retention is None  # no settings: the installation's default
    with pytest.raises(AttributeError):
        t.name = "x"  # type: ignore[misc]


def test_tenant_retention_from_proto() -> None:
    def tenant(**settings: Any) -> Tenant:
        return Tenant.from_proto(
            tenant_pb2.Tenant(name="acme", settings=tenant_pb2.TenantSettings(**settings))
        )

    assert tenant(retention=Duration(seconds=7 * 86_400)).retention == timedelta(days=7)
    assert tenant(retention=Duration(seconds=90)).retention == timedelta(seconds=90)
    # Unset or 0: the installation's default, None either way.
    assert tenant().retention is None
    assert tenant(retention=Duration(seconds=0)).retention is None
    assert tenant(max_steps_per_workflow=3).retention is None


def test_retention_requests() -> None:
    create = _common.create_tenant_request("acme", None, timedelta(days=30))
    assert create.settings.HasField("retention")
    assert create.settings.retention == Duration(seconds=30 * 86_400)
    plain = _common.create_tenant_request("acme", "ACME")
    assert not plain.HasField("settings") and plain.display_name == "ACME"

    upd = _common.update_tenant_request("acme", None, timedelta(hours=1, seconds=5))
    assert list(upd.settings_mask.paths) == ["retention"]
    assert upd.settings.retention == Duration(seconds=3605)
    assert not upd.HasField("display_name")
    # timedelta(0) is sent, named in the mask: it clears the tenant's retention.
    cleared = _common.update_tenant_request("acme", None, timedelta(0))
    assert list(cleared.settings_mask.paths) == ["retention"]
    assert cleared.settings.HasField("retention") and cleared.settings.retention.seconds == 0
    untouched = _common.update_tenant_request("acme", "x")
    assert not untouched.HasField("settings") and not untouched.HasField("settings_mask")

    for fractional in (timedelta(seconds=1.5), timedelta(days=1, microseconds=1)):
        with pytest.raises(ValueError, match="^retention: whole seconds only"):
            _common.create_tenant_request("acme", None, fractional)
        with pytest.raises(ValueError, match="^retention: whole seconds only"):
            _common.update_tenant_request("acme", None, fractional)
    with pytest.raises(ValueError, match="^retention: must not be negative"):
        _common.update_tenant_request("acme", None, timedelta(seconds=-60))
    bad: Any
    for bad in (3600, 1.0, "7d"):
        with pytest.raises(TypeError, match="^retention: expected a datetime.timedelta"):
            _common.create_tenant_request("acme", None, bad)


class _Tenants(tenant_pb2_grpc.TenantServiceServicer):
    """Answers CreateTenant and UpdateTenant with the settings they were sent, as the
    daemon does for retention; records the requests."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def CreateTenant(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return tenant_pb2.Tenant(name=request.name, settings=request.settings)

    def UpdateTenant(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        settings = tenant_pb2.TenantSettings()
        if "retention" in request.settings_mask.paths and request.settings.retention.seconds:
            settings.retention.CopyFrom(request.settings.retention)
        return tenant_pb2.Tenant(name=request.name, settings=settings)


@pytest.fixture
def tenants_server() -> Iterator[tuple[str, _Tenants]]:
    fake = _Tenants()  # type: ignore[abstract]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    tenant_pb2_grpc.add_TenantServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", fake
    server.stop(grace=None)


def test_tenant_retention_on_the_wire(tenants_server: tuple[str, _Tenants]) -> None:
    address, fake = tenants_server
    with mantle.Client(address, token="tok") as c:
        assert c.create_tenant("acme", retention=timedelta(days=2)).retention == timedelta(days=2)
        assert c.create_tenant("plain").retention is None
        assert c.update_tenant("acme", retention=timedelta(minutes=5)).retention == timedelta(minutes=5)
        assert c.update_tenant("acme", retention=timedelta(0)).retention is None
        with pytest.raises(ValueError, match="whole seconds"):
            c.update_tenant("acme", retention=timedelta(milliseconds=1500))
        with pytest.raises(ValueError, match="whole seconds"):
            c.create_tenant("frac", retention=timedelta(seconds=0.25))
    # The fractional ones were refused before anything was sent.
    assert [(r.name, r.settings.retention.seconds) for r in fake.requests] == [
        ("acme", 172_800), ("plain", 0), ("acme", 300), ("acme", 0),
    ]
    assert [list(r.settings_mask.paths) for r in fake.requests[2:]] == [["retention"]] * 2


@pytest.mark.asyncio
async def test_aio_tenant_retention_on_the_wire(tenants_server: tuple[str, _Tenants]) -> None:
    address, fake = tenants_server
    async with mantle.aio.Client(address, token="tok") as c:
        created = await c.create_tenant("acme", "ACME", retention=timedelta(hours=12))
        assert created.retention == timedelta(hours=12)
        updated = await c.update_tenant("acme", retention=timedelta(seconds=61))
        assert updated.retention == timedelta(seconds=61)
        with pytest.raises(ValueError, match="whole seconds"):
            await c.update_tenant("acme", retention=timedelta(seconds=61.5))
    assert len(fake.requests) == 2
    assert list(fake.requests[1].settings_mask.paths) == ["retention"]


def test_api_key_from_proto() -> None:
    msg = tenant_pb2.ApiKey(id="abc", tenant="", name="ops", scopes=["tenants:admin"],
                            create_time=_ts(10), revoke_time=_ts(20))
    k = ApiKey.from_proto(msg)
    assert k.scopes == ("tenants:admin",)
    assert k.operator and k.revoked
    assert k.expire_time is None and k.last_use_time is None
    assert k.revoke_time == datetime(1970, 1, 1, 0, 0, 20, tzinfo=timezone.utc)


def test_created_api_key_hides_token() -> None:
    msg = tenant_pb2.CreateApiKeyResponse(api_key=tenant_pb2.ApiKey(id="abc"), token="mntl_abc_secret")
    created = CreatedApiKey.from_proto(msg)
    assert created.token == "mntl_abc_secret"
    assert created.api_key.id == "abc"
    assert "secret" not in repr(created)


def test_server_info_from_proto() -> None:
    msg = system_pb2.ServerInfo(
        version="0.1.0", database="sqlite",
        caller=common_pb2.Caller(tenant="t", scopes=["*"], operator=False, key_id="k"),
    )
    info = ServerInfo.from_proto(msg)
    assert info.caller is not None
    assert (info.caller.tenant, info.caller.scopes, info.caller.operator, info.caller.key_id) == ("t", ("*",), False, "k")
    assert ServerInfo.from_proto(system_pb2.ServerInfo()).caller is None


def test_to_timestamp() -> None:
    dt = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert to_timestamp(dt).seconds == int(dt.timestamp())
    with pytest.raises(ValueError, match="naive"):
        to_timestamp(datetime(2030, 1, 1))
    before = datetime.now(timezone.utc).timestamp()
    ts = to_timestamp(timedelta(hours=1))
    assert before + 3600 - 1 <= ts.seconds <= before + 3600 + 5


def test_request_builders() -> None:
    req = _common.create_api_key_request("acme", "executions:read", None, None)
    assert list(req.scopes) == ["executions:read"]
    assert not req.HasField("expire_time")
    upd = _common.update_tenant_request("acme", None)
    assert not upd.HasField("display_name")
    upd = _common.update_tenant_request("acme", "")
    assert upd.HasField("display_name") and upd.display_name == ""
    with pytest.raises(ValueError, match="page_size"):
        _common.check_page_size(-1)


def test_public_api() -> None:
    assert mantle.__version__ == "0.1.0"
    assert inspect.iscoroutinefunction(mantle.aio.Client.server_info)
    sync_methods = {n for n in vars(mantle.Client) if not n.startswith("_")}
    aio_methods = {n for n in vars(mantle.aio.Client) if not n.startswith("_")}
    assert sync_methods == aio_methods
    assert {
        "cancel_executions", "delete_execution", "delete_executions", "rollback_definition",
    } <= sync_methods
    for name in ("create_tenant", "update_tenant"):
        for cls in (mantle.Client, mantle.aio.Client):
            retention = inspect.signature(getattr(cls, name)).parameters["retention"]
            assert retention.kind is inspect.Parameter.KEYWORD_ONLY and retention.default is None
    assert Path(mantle.__file__).with_name("py.typed").is_file()
