"""Connection settings shared by the sync and asyncio clients: address parsing, local
address detection and token discovery."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_ADDRESS = "127.0.0.1:8080"
TOKEN_ENV = "MANTLE_TOKEN"
DATA_DIR_ENV = "MANTLE_DATA_DIR"
OPERATOR_TOKEN_FILE = "operator-token"
TENANT_HEADER = "x-mantle-tenant"


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed daemon address."""

    host: str
    """Host name or IP address, without brackets for IPv6."""
    port: int
    tls: bool
    """True for ``https://`` addresses: TLS with the default root certificates."""

    @property
    def target(self) -> str:
        """The gRPC channel target, ``host:port`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def uri(self) -> str:
        """``http://host:port`` or ``https://host:port``."""
        return f"{'https' if self.tls else 'http'}://{self.target}"


def parse_address(address: str) -> Address:
    """Parses ``host:port``, ``http://host:port`` or ``https://host:port``.

    IPv6 hosts are written in brackets (``[::1]:8080``). ``http://`` and ``https://``
    addresses without a port use 80 and 443; a bare ``host:port`` must name its port.
    Raises ``ValueError`` for anything else.
    """
    if not isinstance(address, str) or not address.strip():
        raise ValueError("address: must not be empty")
    raw = address.strip()
    scheme = ""
    rest = raw
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(
                f"address: unsupported scheme {scheme!r} in {address!r} (use http:// or https://)"
            )
        rest = rest.rstrip("/")
        if "/" in rest or "?" in rest or "#" in rest:
            raise ValueError(f"address: {address!r} must not contain a path")
    if not rest:
        raise ValueError(f"address: {address!r} has no host")
    # urlsplit handles brackets and ports; give it a scheme so it parses the netloc.
    try:
        parts = urlsplit(f"//{rest}")
        host = parts.hostname
        port = parts.port
    except ValueError as e:
        raise ValueError(f"address: invalid address {address!r}: {e}") from None
    if not host or parts.username is not None or parts.password is not None:
        raise ValueError(f"address: invalid address {address!r}")
    if ":" in host:
        # Only bracketed IPv6 literals may contain colons.
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"address: invalid IPv6 host in {address!r}") from None
    if port is None:
        if scheme == "https":
            port = 443
        elif scheme == "http":
            port = 80
        else:
            raise ValueError(f"address: {address!r} needs a port (host:port)")
    if not 0 < port < 65536:
        raise ValueError(f"address: port out of range in {address!r}")
    return Address(host=host, port=port, tls=scheme == "https")


def is_local_host(host: str) -> bool:
    """True for ``localhost`` (any case, one optional trailing dot), addresses in
    127.0.0.0/8, ``::1`` and IPv4-mapped loopback addresses (``::ffff:127.0.0.1``).
    Brackets are ignored. (The rule of the Rust client's ``is_local_host``.)"""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.removesuffix(".")
    if h.lower() == "localhost":
        return True
    ip = _ip(h)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and _is_loopback(ip)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (no zone index), or None."""
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # Explicit rather than ip.is_loopback, whose handling of IPv4-mapped IPv6 addresses
    # changed in Python 3.13: ::ffff:127.0.0.1 is not loopback here (as in Rust).
    if isinstance(ip, ipaddress.IPv4Address):
        return ip in _LOOPBACK_V4
    return ip == _LOOPBACK_V6


def _is_unspecified(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip == (_UNSPECIFIED_V4 if isinstance(ip, ipaddress.IPv4Address) else _UNSPECIFIED_V6)


_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")
_UNSPECIFIED_V4 = ipaddress.IPv4Address("0.0.0.0")
_UNSPECIFIED_V6 = ipaddress.IPv6Address("::")


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The daemon's data directory as clients see it: ``MANTLE_DATA_DIR``, else
    ``$XDG_DATA_HOME/mantle``, else ``~/.local/share/mantle``."""
    e = os.environ if env is None else env
    explicit = e.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = e.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg).expanduser() / "mantle"
    home = e.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".local" / "share" / "mantle"


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """An IP address and port, as in the ``address=`` line of the operator token file."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


def parse_socket_address(text: str) -> SocketAddress | None:
    """``<ipv4>:<port>`` or ``[<ipv6>]:<port>`` (as Rust's ``SocketAddr`` parses it), or
    None for anything else."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        return None
    port = int(port_text)
    if port > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        ip = _ip(host[1:-1])
        if not isinstance(ip, ipaddress.IPv6Address):
            return None
    else:
        ip = _ip(host)
        if not isinstance(ip, ipaddress.IPv4Address):
            return None
    return SocketAddress(ip, port)


@dataclass(frozen=True, slots=True)
class OperatorToken:
    """The operator token file: the token, and the address of the daemon that wrote it.

    The daemon writes ``<data dir>/operator-token`` at every start of its embedded store:
    the token on the first line, then ``address=<ip>:<port>``, where it listens. The token
    is sent only to that daemon."""

    path: Path
    token: str = field(repr=False)
    address: SocketAddress | None
    """Where the daemon that wrote it listens; None in a file of an older daemon."""
    bad_address: str | None = None
    """The value of an ``address=`` line that is not an IP address and port."""

    def belongs_to(self, target: Address) -> bool:
        """Whether ``target`` reaches the daemon that wrote the file: the same port, and
        the same IP address, or a loopback host (``localhost``, 127.0.0.0/8, ``::1``) when
        the daemon listens on loopback or on every interface. (The Rust client's
        ``OperatorToken::belongs_to``.)"""
        recorded = self.address
        if recorded is None or target.port != recorded.port:
            return False
        if _ip(target.host) == recorded.ip:
            return True
        return is_local_host(target.host) and (
            _is_loopback(recorded.ip) or _is_unspecified(recorded.ip)
        )


def read_operator_token(directory: Path) -> OperatorToken | None:
    """Reads ``<directory>/operator-token``: the first non-empty line (trimmed) is the
    token, an ``address=`` line where its daemon listens. None when the file (or the
    directory) does not exist or holds no token; other errors of reading it raise
    ``OSError``."""
    path = directory / OPERATOR_TOKEN_FILE
    try:
        content = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    token: str | None = None
    address: SocketAddress | None = None
    bad_address: str | None = None
    for line in (raw.strip() for raw in content.splitlines()):
        if not line:
            continue
        if line.startswith("address="):
            value = line.removeprefix("address=")
            address = parse_socket_address(value)
            bad_address = value if address is None else None
        elif token is None:
            token = line
    if token is None:
        return None
    return OperatorToken(path, token, address, bad_address)


@dataclass(frozen=True, slots=True)
class ResolvedToken:
    """The token to send and where it came from."""

    token: str | None = field(repr=False)
    """The bearer token; None sends none."""
    source: str
    """Where it came from, for error messages (worded as the Rust client's
    ``TokenSource``): ``the token given with the token argument``, ``the token in
    MANTLE_TOKEN``, ``the operator token of the daemon at <ip:port>, from <path>``, or
    ``no token (...)`` saying why. Never holds the token."""


_ARGUMENT = "the token argument"


def _no_token(why: str | None = None) -> ResolvedToken:
    if why is None:
        return ResolvedToken(None, f"no token (neither {_ARGUMENT} nor {TOKEN_ENV} is set)")
    return ResolvedToken(None, f"no token (neither {_ARGUMENT} nor {TOKEN_ENV} is set, and {why})")


def resolve(
    token: str | None, address: Address, env: Mapping[str, str] | None = None
) -> ResolvedToken:
    """Picks the bearer token, as the Rust client does:

    1. ``token`` if given; an empty or blank string means "send no token".
    2. ``MANTLE_TOKEN`` if set and not blank.
    3. The operator token file ``<data dir>/operator-token``, only when ``address``
       reaches the daemon that wrote it (:meth:`OperatorToken.belongs_to`); a file that
       records no address (an older daemon's) is not used.
    """
    if token is not None:
        token = token.strip()
        if not token:
            return _no_token(f"{_ARGUMENT} is empty")
        return ResolvedToken(token, f"the token given with {_ARGUMENT}")
    e = os.environ if env is None else env
    from_env = e.get(TOKEN_ENV, "").strip()
    if from_env:
        return ResolvedToken(from_env, f"the token in {TOKEN_ENV}")
    file = read_operator_token(data_dir(e))
    if file is None:
        return _no_token()
    if file.belongs_to(address):
        return ResolvedToken(
            file.token, f"the operator token of the daemon at {file.address}, from {file.path}"
        )
    if file.bad_address is not None:
        why = f"{file.path}: address={file.bad_address} is not an IP address and port"
    elif file.address is not None:
        why = (
            f"{file.path} is the operator token of the daemon at {file.address}, "
            f"not of {address.uri}"
        )
    else:
        why = f"{file.path} records no daemon address (a daemon start rewrites it)"
    return _no_token(why)


def resolve_token(
    token: str | None, address: Address, env: Mapping[str, str] | None = None
) -> str | None:
    """The token :func:`resolve` picks; None when there is none."""
    return resolve(token, address, env).token


def call_metadata(token: str | None, tenant: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every authenticated RPC."""
    md: list[tuple[str, str]] = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if tenant:
        md.append((TENANT_HEADER, tenant))
    return tuple(md)
