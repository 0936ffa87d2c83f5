"""Immutable result types returned by the clients, converted from the protobuf messages.

Timestamps are timezone-aware ``datetime`` objects in UTC, or ``None`` when the server
left them unset (e.g. a key that never expires has ``expire_time=None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from mantle.v1 import common_pb2, system_pb2, tenant_pb2

__all__ = ["Tenant", "ApiKey", "CreatedApiKey", "Caller", "ServerInfo"]


def _time(msg: object, name: str) -> datetime | None:
    if not msg.HasField(name):  # type: ignore[attr-defined]
        return None
    ts: Timestamp = getattr(msg, name)
    return ts.ToDatetime(tzinfo=timezone.utc)


def to_timestamp(value: datetime | timedelta) -> Timestamp:
    """Converts an aware ``datetime`` (or a ``timedelta`` from now) to a Timestamp.

    Naive datetimes are rejected because their time zone is ambiguous.
    """
    if isinstance(value, timedelta):
        value = datetime.now(timezone.utc) + value
    if not isinstance(value, datetime):
        raise TypeError(f"expected datetime or timedelta, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime: pass a timezone-aware datetime, e.g. tzinfo=timezone.utc")
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc))
    return ts


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant: an isolated namespace for definitions, executions and secrets."""

    name: str
    """Unique DNS-label name. Immutable."""
    id: str
    """Server-assigned UUID. Immutable."""
    display_name: str
    """Human-readable name; empty when unset."""
    create_time: datetime | None
    update_time: datetime | None

    @classmethod
    def from_proto(cls, msg: tenant_pb2.Tenant) -> Tenant:
        return cls(
            name=msg.name,
            id=msg.id,
            display_name=msg.display_name,
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key, without its token."""

    id: str
    """Identifier; also the visible prefix of the token (``mntl_<id>_<secret>``)."""
    tenant: str
    """Tenant the key acts on; empty for operator keys."""
    name: str
    """Free-form label."""
    scopes: tuple[str, ...]
    create_time: datetime | None
    expire_time: datetime | None
    """When the key stops working; None means never."""
    revoke_time: datetime | None
    """When the key was revoked; None while it is active."""
    last_use_time: datetime | None
    """When the key last authenticated a request (updated at most once a minute)."""

    @property
    def revoked(self) -> bool:
        """True once the key has been revoked."""
        return self.revoke_time is not None

    @property
    def operator(self) -> bool:
        """True for operator keys (keys that belong to no tenant)."""
        return self.tenant == ""

    @classmethod
    def from_proto(cls, msg: tenant_pb2.ApiKey) -> ApiKey:
        return cls(
            id=msg.id,
            tenant=msg.tenant,
            name=msg.name,
            scopes=tuple(msg.scopes),
            create_time=_time(msg, "create_time"),
            expire_time=_time(msg, "expire_time"),
            revoke_time=_time(msg, "revoke_time"),
            last_use_time=_time(msg, "last_use_time"),
        )


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    """A newly created API key and its bearer token.

    The token is shown only here, once: store it now. It is left out of ``repr()`` so it
    does not end up in logs by accident.
    """

    api_key: ApiKey
    token: str = field(repr=False)

    @classmethod
    def from_proto(cls, msg: tenant_pb2.CreateApiKeyResponse) -> CreatedApiKey:
        return cls(api_key=ApiKey.from_proto(msg.api_key), token=msg.token)


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity a request was authenticated as."""

    tenant: str
    """Tenant the request acts on; empty when an operator key names no tenant."""
    scopes: tuple[str, ...]
    operator: bool
    """True for operator keys, which may manage tenants and their API keys."""
    key_id: str
    """API key id, or ``env:MANTLE_API_TOKEN`` / ``file:<name>`` for other tokens."""

    @classmethod
    def from_proto(cls, msg: common_pb2.Caller) -> Caller:
        return cls(
            tenant=msg.tenant,
            scopes=tuple(msg.scopes),
            operator=msg.operator,
            key_id=msg.key_id,
        )


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """The daemon's version, database backend and the caller's identity."""

    version: str
    database: str
    """``sqlite`` or ``postgres``."""
    caller: Caller | None

    @classmethod
    def from_proto(cls, msg: system_pb2.ServerInfo) -> ServerInfo:
        return cls(
            version=msg.version,
            database=msg.database,
            caller=Caller.from_proto(msg.caller) if msg.HasField("caller") else None,
        )
