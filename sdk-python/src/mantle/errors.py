"""Exceptions raised by the Mantle clients.

Every failed RPC is turned into a :class:`MantleError` by :func:`from_rpc_error`; the
subclass depends on the gRPC status code, so callers can write::

    try:
        client.get_tenant("acme")
    except mantle.errors.NotFound:
        ...

Status codes without a dedicated subclass (for example ``CANCELLED`` or
``UNIMPLEMENTED``) raise :class:`MantleError` itself; check :attr:`MantleError.code`.
"""

from __future__ import annotations

import grpc

__all__ = [
    "MantleError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unauthenticated",
    "FailedPrecondition",
    "ResourceExhausted",
    "Unavailable",
    "DeadlineExceeded",
    "Internal",
    "from_rpc_error",
]


class MantleError(Exception):
    """A request to the Mantle daemon failed.

    Attributes:
        code: The gRPC status code of the failure.
        message: The server's error message (for validation errors it names the field,
            e.g. ``name: must be a DNS label ...``).
    """

    code: grpc.StatusCode
    message: str

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidArgument(MantleError):
    """The request is malformed (``INVALID_ARGUMENT``); the message names the field."""


class NotFound(MantleError):
    """The resource does not exist or belongs to another tenant (``NOT_FOUND``)."""


class AlreadyExists(MantleError):
    """The resource already exists, e.g. a taken tenant name (``ALREADY_EXISTS``)."""


class PermissionDenied(MantleError):
    """The token lacks the scope the RPC needs (``PERMISSION_DENIED``)."""


class Unauthenticated(MantleError):
    """The token is missing, unknown, revoked or expired (``UNAUTHENTICATED``)."""


class FailedPrecondition(MantleError):
    """The system is not in a state that allows the operation (``FAILED_PRECONDITION``),
    e.g. deleting the tenant ``default``."""


class ResourceExhausted(MantleError):
    """A quota or limit was exceeded (``RESOURCE_EXHAUSTED``)."""


class Unavailable(MantleError):
    """The daemon cannot be reached or is shutting down (``UNAVAILABLE``)."""


class DeadlineExceeded(MantleError):
    """The call did not finish before its timeout (``DEADLINE_EXCEEDED``)."""


class Internal(MantleError):
    """The daemon hit an internal error (``INTERNAL``)."""


_BY_CODE: dict[grpc.StatusCode, type[MantleError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
}


def error_class(code: grpc.StatusCode) -> type[MantleError]:
    """Returns the :class:`MantleError` subclass used for ``code``."""
    return _BY_CODE.get(code, MantleError)


def from_rpc_error(error: grpc.RpcError) -> MantleError:
    """Converts a ``grpc.RpcError`` (sync or ``grpc.aio``) into a :class:`MantleError`.

    This is the single place where gRPC failures become SDK exceptions. An error object
    that carries no status (which grpc does not normally produce) maps to ``UNKNOWN``.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = details_fn() if callable(details_fn) else None
    if message is None:
        message = ""
    return error_class(code)(code, str(message))
