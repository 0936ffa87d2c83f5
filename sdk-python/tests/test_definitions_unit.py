"""Unit tests of the workflow definition API that need no daemon: validation problems in
error details, protobuf conversion and request construction. An in-process grpc server
stands in for the daemon where the real trailer encoding matters."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2  # type: ignore[import-untyped,unused-ignore]
from grpc_status import rpc_status  # type: ignore[import-untyped,unused-ignore]

import mantle
import mantle.aio
from mantle import _common, errors
from mantle.types import (
    ApplyResult,
    Change,
    Definition,
    DefinitionSummary,
    DefinitionVersion,
    FieldChange,
    Plan,
    ValidationProblem,
    ValidationResult,
)
from mantle.v1 import definition_pb2, definition_pb2_grpc

PROBLEMS = [
    definition_pb2.ValidationProblem(
        file="hello.yaml", line=4, column=13, path="steps[0].action",
        message="unknown action core/lgo",
    ),
    definition_pb2.ValidationProblem(file="hello.yaml", line=9, column=1, message="missing name"),
]


def _details(*messages: Any, code: int = grpc.StatusCode.INVALID_ARGUMENT.value[0]) -> bytes:
    """An encoded google.rpc.Status whose details pack ``messages``."""
    status = status_pb2.Status(code=code, message="hello.yaml: 2 problems")
    for m in messages:
        detail = any_pb2.Any()
        detail.Pack(m)
        status.details.append(detail)
    return bytes(status.SerializeToString())


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailers: Any = ()) -> None:
        self._code = code
        self._details = details
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


# -- problems in error details -----------------------------------------------------------


def test_invalid_argument_carries_problems() -> None:
    trailers = (
        ("content-type", "application/grpc"),
        (errors.STATUS_DETAILS_KEY, _details(definition_pb2.ValidationProblems(problems=PROBLEMS))),
    )
    err = errors.from_rpc_error(
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "hello.yaml: 2 problems", trailers)
    )
    assert type(err) is errors.InvalidArgument
    assert err.problems == [
        ValidationProblem("hello.yaml", 4, 13, "steps[0].action", "unknown action core/lgo"),
        ValidationProblem("hello.yaml", 9, 1, "", "missing name"),
    ]
    assert err.message == "hello.yaml: 2 problems"
    assert str(err) == (
        "INVALID_ARGUMENT: hello.yaml: 2 problems\n"
        "  hello.yaml:4:13: steps[0].action: unknown action core/lgo\n"
        "  hello.yaml:9:1: missing name"
    )
    assert "problems=[ValidationProblem(" in repr(err)
    with pytest.raises(AttributeError):
        err.problems[0].line = 1  # type: ignore[misc]


def test_problems_survive_pickling() -> None:
    err = errors.InvalidArgument(
        grpc.StatusCode.INVALID_ARGUMENT, "bad", [ValidationProblem("f", 1, 2, "p", "m")]
    )
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is errors.InvalidArgument
    assert copy.problems == err.problems and copy.message == "bad"


def test_other_invalid_arguments_have_no_problems() -> None:
    plain = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "name: required"))
    assert isinstance(plain, errors.InvalidArgument)
    assert plain.problems == []
    assert str(plain) == "INVALID_ARGUMENT: name: required"
    # Direct construction (as before problems existed) still works.
    assert errors.InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "x").problems == []


def test_undecodable_or_foreign_details_are_ignored() -> None:
    foreign = status_pb2.Status(code=3)
    assert errors.validation_problems([(errors.STATUS_DETAILS_KEY, b"\xff\xff\xff")]) == []
    assert errors.validation_problems([(errors.STATUS_DETAILS_KEY, _details(foreign))]) == []
    assert errors.validation_problems([(errors.STATUS_DETAILS_KEY, "text, not bytes")]) == []
    assert errors.validation_problems([]) == []
    bad_payload = any_pb2.Any(
        type_url="type.googleapis.com/mantle.v1.ValidationProblems", value=b"\xff\xff"
    )
    status = status_pb2.Status(code=3, details=[bad_payload])
    assert errors.validation_problems([(errors.STATUS_DETAILS_KEY, status.SerializeToString())]) == []


def test_problems_are_read_only_for_invalid_argument() -> None:
    trailers = ((errors.STATUS_DETAILS_KEY, _details(definition_pb2.ValidationProblems(problems=PROBLEMS))),)
    err = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "oops", trailers))
    assert type(err) is errors.Internal
    assert not hasattr(err, "problems")


def test_trailers_that_cannot_be_read_mean_no_problems() -> None:
    class Broken(FakeRpcError):
        def trailing_metadata(self) -> Any:
            raise RuntimeError("no call")

    err = errors.from_rpc_error(Broken(grpc.StatusCode.INVALID_ARGUMENT, "x"))
    assert isinstance(err, errors.InvalidArgument) and err.problems == []


def test_problem_str_leaves_out_missing_parts() -> None:
    assert str(ValidationProblem("a.yaml", 2, 0, "name", "required")) == "a.yaml:2: name: required"
    assert str(ValidationProblem("a.yaml", 0, 0, "", "not YAML")) == "a.yaml: not YAML"


# -- a real grpc server sending the details ---------------------------------------------


class _Refusing(definition_pb2_grpc.DefinitionServiceServicer):
    """Refuses every file with two problems, the way the daemon does."""

    def _refuse(self, context: grpc.ServicerContext) -> None:
        detail = any_pb2.Any()
        detail.Pack(definition_pb2.ValidationProblems(problems=PROBLEMS))
        status = status_pb2.Status(
            code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
            message="hello.yaml: 2 problems",
            details=[detail],
        )
        context.abort_with_status(rpc_status.to_status(status))

    def ValidateDefinition(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._refuse(context)

    def ApplyDefinition(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._refuse(context)


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    definition_pb2_grpc.add_DefinitionServiceServicer_to_server(_Refusing(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def _check_refusal(err: errors.InvalidArgument) -> None:
    assert err.message == "hello.yaml: 2 problems"
    assert [(p.line, p.column, p.path) for p in err.problems] == [
        (4, 13, "steps[0].action"),
        (9, 1, ""),
    ]


def test_sync_client_decodes_problems_from_the_wire(refusing_server: str) -> None:
    with mantle.Client(refusing_server, token="tok") as c:
        with pytest.raises(errors.InvalidArgument) as exc:
            c.validate("name: hello\n", "hello.yaml")
        _check_refusal(exc.value)
        with pytest.raises(errors.InvalidArgument) as exc:
            c.apply("name: hello\n")
        _check_refusal(exc.value)


@pytest.mark.asyncio
async def test_aio_client_decodes_problems_from_the_wire(refusing_server: str) -> None:
    async with mantle.aio.Client(refusing_server, token="tok") as c:
        with pytest.raises(errors.InvalidArgument) as exc:
            await c.validate("name: hello\n", "hello.yaml")
        _check_refusal(exc.value)


# -- conversion ---------------------------------------------------------------------------


def _ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def _definition_msg() -> definition_pb2.Definition:
    return definition_pb2.Definition(
        name="hello", version=2, content_hash="ab" * 32, description="Greets.",
        source="name: hello  # comment\n", spec_json='{"name": "hello", "steps": [{"name": "greet"}]}',
        create_time=_ts(1_700_000_000),
    )


def test_validation_result_from_proto() -> None:
    msg = definition_pb2.ValidateDefinitionResponse(name="hello", content_hash="abc", step_count=3)
    assert ValidationResult.from_proto(msg) == ValidationResult("hello", "abc", 3)


def test_plan_from_proto() -> None:
    msg = definition_pb2.Plan(
        name="hello", current_version=1, changed=True, content_hash="abc",
        changes=[
            definition_pb2.Change(kind=definition_pb2.Change.ADDED, section="step", name="notify"),
            definition_pb2.Change(kind=definition_pb2.Change.REMOVED, section="input", name="city"),
            definition_pb2.Change(
                kind=definition_pb2.Change.CHANGED, section="step", name="greet",
                fields=[definition_pb2.FieldChange(path="params.message", before='"a"', after='"b"')],
            ),
            definition_pb2.Change(section="step", name="odd"),
        ],
    )
    plan = Plan.from_proto(msg)
    assert (plan.name, plan.current_version, plan.changed, plan.content_hash) == ("hello", 1, True, "abc")
    assert [c.kind for c in plan.changes] == ["added", "removed", "changed", "unspecified"]
    assert plan.changes[2] == Change(
        kind="changed", section="step", name="greet",
        fields=[FieldChange(path="params.message", before='"a"', after='"b"')],
    )
    assert plan.changes[0].fields == []
    empty = Plan.from_proto(definition_pb2.Plan(name="hello", current_version=3))
    assert empty.changes == [] and not empty.changed


def test_definition_from_proto_parses_spec() -> None:
    d = Definition.from_proto(_definition_msg())
    assert (d.name, d.version, d.content_hash, d.description) == ("hello", 2, "ab" * 32, "Greets.")
    assert d.source == "name: hello  # comment\n"
    assert d.spec == {"name": "hello", "steps": [{"name": "greet"}]}
    assert d.create_time is not None and d.create_time.timestamp() == 1_700_000_000
    assert "comment" not in repr(d)  # source and spec are left out of repr
    bare = Definition.from_proto(definition_pb2.Definition(name="x"))
    assert bare.spec == {} and bare.create_time is None


def test_apply_result_from_proto() -> None:
    msg = definition_pb2.ApplyDefinitionResponse(
        definition=_definition_msg(), created=True,
        changes=[definition_pb2.Change(kind=definition_pb2.Change.ADDED, section="step", name="greet")],
    )
    r = ApplyResult.from_proto(msg)
    assert r.created is True
    assert r.definition == Definition.from_proto(_definition_msg())
    assert r.changes == [Change("added", "step", "greet", [])]


def test_listing_types_from_proto() -> None:
    s = DefinitionSummary.from_proto(definition_pb2.DefinitionSummary(
        name="hello", latest_version=4, description="d", create_time=_ts(10), update_time=_ts(20),
    ))
    assert (s.name, s.latest_version, s.description) == ("hello", 4, "d")
    assert s.create_time is not None and s.update_time is not None
    assert s.update_time > s.create_time
    v = DefinitionVersion.from_proto(definition_pb2.DefinitionVersion(version=4, content_hash="abc"))
    assert v == DefinitionVersion(version=4, content_hash="abc", create_time=None)


# -- requests -----------------------------------------------------------------------------


def test_source_requests() -> None:
    req = _common.source_request(definition_pb2.PlanDefinitionRequest, "name: x\n", None)
    assert isinstance(req, definition_pb2.PlanDefinitionRequest)
    assert (req.source, req.filename) == ("name: x\n", "")
    req2 = _common.source_request(definition_pb2.ApplyDefinitionRequest, "", "a.yaml")
    assert req2.filename == "a.yaml"
    with pytest.raises(TypeError, match="source"):
        _common.source_request(definition_pb2.ValidateDefinitionRequest, b"name: x", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version"):
        _common.check_version(-1)
    assert _common.check_version(0) == 0


def test_rollback_request() -> None:
    req = _common.rollback_request("hello", 2)
    assert isinstance(req, definition_pb2.RollbackDefinitionRequest)
    assert (req.name, req.to_version) == ("hello", 2)
    bad: Any
    for bad in (0, -1, 1.0, True, "2", None):
        with pytest.raises(ValueError, match="^to_version: must be a positive version number"):
            _common.rollback_request("hello", bad)


class _Rollbacks(definition_pb2_grpc.DefinitionServiceServicer):
    """``hello`` has versions 1 to 3; a rollback to 3 (the latest) stores nothing, one to
    an older version stores version 4 with that version's source."""

    def __init__(self) -> None:
        self.requests: list[definition_pb2.RollbackDefinitionRequest] = []

    def RollbackDefinition(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        if request.name != "hello" or not 1 <= request.to_version <= 3:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} v{request.to_version} not found")
        latest = request.to_version == 3
        return definition_pb2.ApplyDefinitionResponse(
            definition=definition_pb2.Definition(
                name="hello",
                version=3 if latest else 4,
                source=f"name: hello  # v{request.to_version}\n",
            ),
            created=not latest,
            changes=[] if latest else [
                definition_pb2.Change(kind=definition_pb2.Change.CHANGED, section="step", name="greet")
            ],
        )


@pytest.fixture
def rollbacks() -> Iterator[tuple[str, _Rollbacks]]:
    fake = _Rollbacks()  # type: ignore[abstract]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    definition_pb2_grpc.add_DefinitionServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", fake
    server.stop(grace=None)


def test_rollback_definition(rollbacks: tuple[str, _Rollbacks]) -> None:
    address, fake = rollbacks
    with mantle.Client(address, token="tok") as c:
        r = c.rollback_definition("hello", 1)
        assert isinstance(r, ApplyResult)
        assert (r.created, r.definition.version, r.definition.source) == (True, 4, "name: hello  # v1\n")
        assert r.changes == [Change("changed", "step", "greet", [])]
        same = c.rollback_definition("hello", 3)
        assert (same.created, same.definition.version, same.changes) == (False, 3, [])
        with pytest.raises(errors.NotFound):
            c.rollback_definition("hello", 9)
        with pytest.raises(ValueError, match="to_version"):
            c.rollback_definition("hello", 0)
    assert [(r.name, r.to_version) for r in fake.requests] == [("hello", 1), ("hello", 3), ("hello", 9)]


@pytest.mark.asyncio
async def test_aio_rollback_definition(rollbacks: tuple[str, _Rollbacks]) -> None:
    address, fake = rollbacks
    async with mantle.aio.Client(address, token="tok") as c:
        r = await c.rollback_definition("hello", 2)
        assert (r.created, r.definition.version, r.definition.source) == (True, 4, "name: hello  # v2\n")
        with pytest.raises(errors.NotFound):
            await c.rollback_definition("other", 1)
        with pytest.raises(ValueError, match="to_version"):
            await c.rollback_definition("hello", -3)
    assert [(r.name, r.to_version) for r in fake.requests] == [("hello", 2), ("other", 1)]


def test_read_source_file(tmp_path: Path) -> None:
    path = tmp_path / "hello.yaml"
    path.write_text("name: héllo\n", encoding="utf-8")
    assert _common.read_source_file(path) == ("name: héllo\n", str(path))
    assert _common.read_source_file(str(path))[1] == str(path)
    with pytest.raises(FileNotFoundError):
        _common.read_source_file(tmp_path / "missing.yaml")


def test_definition_methods_exist_on_both_clients() -> None:
    names = {
        "validate", "validate_file", "plan", "plan_file", "apply", "apply_file",
        "get_definition", "list_definitions", "list_definition_versions", "delete_definition",
        "rollback_definition",
    }
    assert names <= set(vars(mantle.Client))
    assert names <= set(vars(mantle.aio.Client))
    assert mantle.ValidationProblem is ValidationProblem
