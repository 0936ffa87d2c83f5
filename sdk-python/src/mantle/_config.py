"""Connection settings shared by the sync and asyncio clients: address parsing, local
address detection and token discovery."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
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
    """True for ``localhost``, addresses in 127.0.0.0/8 and ``::1``."""
    h = host.strip().strip("[]").rstrip(".").lower()
    if h == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped in ipaddress.IPv4Network("127.0.0.0/8")
        return ip == ipaddress.IPv6Address("::1")
    return ip in ipaddress.IPv4Network("127.0.0.0/8")


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


def resolve_token(
    token: str | None, address: Address, env: Mapping[str, str] | None = None
) -> str | None:
    """Picks the bearer token: ``token`` if given (an empty string means "send none"),
    else ``MANTLE_TOKEN``, else — only for a local address — the first line of
    ``<data dir>/operator-token``. Returns None when there is no token."""
    if token is not None:
        token = token.strip()
        return token or None
    e = os.environ if env is None else env
    from_env = e.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    if not is_local_host(address.host):
        return None
    path = data_dir(e) / OPERATOR_TOKEN_FILE
    try:
        content = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    lines = content.strip().splitlines()
    return lines[0].strip() if lines and lines[0].strip() else None


def call_metadata(token: str | None, tenant: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every authenticated RPC."""
    md: list[tuple[str, str]] = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if tenant:
        md.append((TENANT_HEADER, tenant))
    return tuple(md)
