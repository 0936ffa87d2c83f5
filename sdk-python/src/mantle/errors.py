"""Exceptions raised by the Mantle clients.

Every failed RPC is turned into a :class:`MantleError` by :func:`from_rpc_error`; the
subclass depends on the gRPC status code, so callers can write::

    try:
        client.get_tenant("acme")
    except mantle.errors.NotFound:
        ...

Status codes without a dedicated subclass (for example ``CANCELLED`` or
``UNIMPLEMENTED``) raise :class:`MantleError` itself; check :attr:`MantleError.code`.

A workflow file that does not validate raises :class:`InvalidArgument` whose
:attr:`~InvalidArgument.problems` lists every problem with its line and column::

    try:
        client.apply_file("hello.yaml")
    except mantle.errors.InvalidArgument as e:
        for problem in e.problems:
            print(problem)  # hello.yaml:4:13: steps[0].action: unknown action ...
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2  # type: ignore[import-untyped,unused-ignore]

from mantle.types import ValidationProblem
from mantle.v1 import definition_pb2

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
    "validation_problems",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""Trailing metadata key of the encoded ``google.rpc.Status`` with the error details."""


class MantleError(Exception):
    """A request to the Mantle daemon failed.

    Attributes:
        code: The gRPC status code of the failure.
        message: The server's error message (for validation errors it names the field,
            e.g. ``name: must be a DNS label ...``).
    """

    code: grpc.StatusCode
    message: str
    token_source: str | None = None
    """For a refused token (``UNAUTHENTICATED``, ``PERMISSION_DENIED``): where the token
    the client sent came from, e.g. ``the token in MANTLE_TOKEN``, ``the operator token of
    the daemon at 127.0.0.1:8080, from /path/operator-token`` or ``no token (...)``;
    ``str()`` of the error ends with ``(sent <token_source>)``. None otherwise."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        if self.token_source:
            text += f" (sent {self.token_source})"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidArgument(MantleError):
    """The request is malformed (``INVALID_ARGUMENT``); the message names the field.

    Attributes:
        problems: For a workflow file that does not validate, every problem in it,
            ordered by position (``str(problem)`` is ``FILE:LINE:COL: PATH: message``).
            Empty for other invalid arguments.
    """

    problems: list[ValidationProblem]

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        problems: Sequence[ValidationProblem] = (),
    ) -> None:
        super().__init__(code, message)
        self.problems = list(problems)
        # Keeps the problems when the exception is pickled (e.g. across processes).
        self.args = (code, message, self.problems)

    def __str__(self) -> str:
        text = super().__str__()
        if not self.problems:
            return text
        return "\n  ".join([text, *(str(p) for p in self.problems)])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"problems={self.problems!r})"
        )


class NotFound(MantleError):
    """The resource does not exist or belongs to another tenant (``NOT_FOUND``)."""


class AlreadyExists(MantleError):
    """The resource already exists, e.g. a taken tenant name (``ALREADY_EXISTS``)."""


class PermissionDenied(MantleError):
    """The token lacks the scope the RPC needs (``PERMISSION_DENIED``);
    :attr:`~MantleError.token_source` says where the token came from."""


class Unauthenticated(MantleError):
    """The token is missing, unknown, revoked or expired (``UNAUTHENTICATED``);
    :attr:`~MantleError.token_source` says where the token came from, if any."""


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


TOKEN_REFUSED_CODES = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
)
"""The codes of a refused token, whose errors name where the token came from."""


def from_rpc_error(error: grpc.RpcError, token_source: str | None = None) -> MantleError:
    """Converts a ``grpc.RpcError`` (sync or ``grpc.aio``) into a :class:`MantleError`.

    This is the single place where gRPC failures become SDK exceptions. An error object
    that carries no status (which grpc does not normally produce) maps to ``UNKNOWN``.
    ``token_source`` (where the client's token came from) is recorded in errors of a
    refused token (:data:`TOKEN_REFUSED_CODES`) as :attr:`MantleError.token_source`.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = details_fn() if callable(details_fn) else None
    if message is None:
        message = ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(code, str(message), validation_problems(_trailers(error)))
    err = error_class(code)(code, str(message))
    if token_source and code in TOKEN_REFUSED_CODES:
        err.token_source = token_source
    return err


def _trailers(error: grpc.RpcError) -> Iterable[tuple[str, Any]]:
    trailers_fn = getattr(error, "trailing_metadata", None)
    if not callable(trailers_fn):
        return ()
    try:
        trailers = trailers_fn()
    except Exception:  # a call object that cannot tell: no details
        return ()
    return trailers or ()


def validation_problems(trailing_metadata: Iterable[tuple[str, Any]]) -> list[ValidationProblem]:
    """The validation problems in a call's trailing metadata: the
    ``mantle.v1.ValidationProblems`` details of the ``google.rpc.Status`` encoded in
    ``grpc-status-details-bin``. Works with the trailers of sync and ``grpc.aio`` calls.
    Empty when there are none or they cannot be decoded."""
    problems: list[ValidationProblem] = []
    for key, value in trailing_metadata:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            continue
        for detail in status.details:
            if not detail.Is(definition_pb2.ValidationProblems.DESCRIPTOR):
                continue
            decoded = definition_pb2.ValidationProblems()
            try:
                detail.Unpack(decoded)
            except DecodeError:
                continue
            problems.extend(ValidationProblem.from_proto(p) for p in decoded.problems)
    return problems
