"""Triggers without a daemon: conversion of the protobuf messages, request construction,
and the four calls against an in-process grpc server standing in for the daemon."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from concurrent import futures
from datetime import datetime, timezone
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

import mantle
import mantle.aio
from mantle import _common, errors
from mantle.types import Trigger, TriggerFire
from mantle.v1 import execution_pb2, trigger_pb2, trigger_pb2_grpc

T = trigger_pb2


def _ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _cron(paused: bool = False) -> trigger_pb2.Trigger:
    return T.Trigger(
        id="tr-1",
        workflow="report",
        type="cron",
        key="cron 0 8 * * 1-5",
        schedule="0 8 * * 1-5",
        timezone="Europe/Berlin",
        catchup="latest",
        inputs_json='{"team": "ops"}',
        version=3,
        paused=paused,
        next_fire_time=_ts(1_700_035_200),
        last_fire=T.TriggerFire(
            scheduled_time=_ts(1_700_000_000),
            fire_time=_ts(1_700_000_001),
            execution_id="ex-9",
            result="started",
        ),
        create_time=_ts(1_699_000_000),
        update_time=_ts(1_699_000_100),
    )


def _webhook() -> trigger_pb2.Trigger:
    return T.Trigger(
        id="tr-2",
        workflow="deploy",
        type="webhook",
        key="webhook /github",
        path="/github",
        secret_name="gh-hook",
        version=1,
        create_time=_ts(1_699_000_000),
        update_time=_ts(1_699_000_000),
    )


# -- conversions --------------------------------------------------------------------------


def test_cron_trigger_from_proto() -> None:
    t = Trigger.from_proto(_cron())
    assert t == Trigger(
        id="tr-1",
        workflow="report",
        type="cron",
        key="cron 0 8 * * 1-5",
        schedule="0 8 * * 1-5",
        timezone="Europe/Berlin",
        catchup="latest",
        path="",
        secret_name="",
        inputs={"team": "ops"},
        version=3,
        paused=False,
        next_fire_time=_utc(1_700_035_200),
        last_fire=TriggerFire(
            scheduled_time=_utc(1_700_000_000),
            fire_time=_utc(1_700_000_001),
            execution_id="ex-9",
            result="started",
        ),
        create_time=_utc(1_699_000_000),
        update_time=_utc(1_699_000_100),
    )
    assert t.last_fire is not None and t.last_fire.started
    with pytest.raises(AttributeError):
        t.paused = True  # type: ignore[misc]


def test_webhook_trigger_from_proto_has_no_cron_fields() -> None:
    t = Trigger.from_proto(_webhook())
    assert (t.type, t.path, t.secret_name) == ("webhook", "/github", "gh-hook")
    assert (t.schedule, t.timezone, t.catchup) == ("", "", "")
    assert t.inputs == {}
    assert t.next_fire_time is None and t.last_fire is None
    assert not t.paused


def test_a_fire_that_started_nothing() -> None:
    fire = TriggerFire.from_proto(
        T.TriggerFire(scheduled_time=_ts(5), result="not started: over the concurrency cap")
    )
    assert fire.execution_id is None and not fire.started
    assert fire.fire_time is None and fire.scheduled_time == _utc(5)
    assert fire.result == "not started: over the concurrency cap"


# -- requests -----------------------------------------------------------------------------


def test_requests_name_the_trigger() -> None:
    assert _common.list_triggers_request(None).workflow == ""
    assert _common.list_triggers_request("report").workflow == "report"
    for cls in (T.PauseTriggerRequest, T.ResumeTriggerRequest, T.FireTriggerRequest):
        assert _common.trigger_request(cls, "tr-1") == cls(id="tr-1")


def test_bad_requests_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="^id: "):
        _common.trigger_request(T.PauseTriggerRequest, "")
    with pytest.raises(TypeError, match="^id: "):
        _common.trigger_request(T.FireTriggerRequest, 7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^workflow: "):
        _common.list_triggers_request(["report"])  # type: ignore[arg-type]


# -- a fake daemon ------------------------------------------------------------------------


class _FakeTriggers(trigger_pb2_grpc.TriggerServiceServicer):
    """Two triggers, ``tr-1`` (cron, workflow ``report``) and ``tr-2`` (webhook, workflow
    ``deploy``); records the requests and the metadata they came with."""

    def __init__(self) -> None:
        self.paused = False
        self.requests: list[Any] = []
        self.tenants: list[str | None] = []

    def _seen(self, request: Any, context: grpc.ServicerContext) -> None:
        self.requests.append(request)
        self.tenants.append(dict(context.invocation_metadata()).get("x-mantle-tenant"))

    def _check(self, request: Any, context: grpc.ServicerContext) -> None:
        if request.id != "tr-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"trigger {request.id} not found")

    def ListTriggers(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        triggers = [t for t in (_cron(self.paused), _webhook()) if request.workflow in ("", t.workflow)]
        return T.ListTriggersResponse(triggers=triggers)

    def PauseTrigger(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        self._check(request, context)
        self.paused = True
        return _cron(True)

    def ResumeTrigger(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        self._check(request, context)
        self.paused = False
        return _cron(False)

    def FireTrigger(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        self._check(request, context)
        return T.FireTriggerResponse(
            execution=execution_pb2.Execution(
                id="ex-10",
                workflow="report",
                version=3,
                status=execution_pb2.EXECUTION_STATUS_PENDING,
                inputs_json='{"team": "ops"}',
                trigger_json='{"type": "cron", "trigger_id": "tr-1", "manual": true}',
                create_time=_ts(1_700_000_100),
            )
        )


@pytest.fixture
def fake() -> Iterator[tuple[str, _FakeTriggers]]:
    servicer = _FakeTriggers()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trigger_pb2_grpc.add_TriggerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def test_sync_client_lists_pauses_resumes_and_fires(fake: tuple[str, _FakeTriggers]) -> None:
    address, servicer = fake
    with mantle.Client(address, token="tok", tenant="acme") as c:
        listed = c.list_triggers()
        assert [(t.id, t.type) for t in listed] == [("tr-1", "cron"), ("tr-2", "webhook")]
        assert [t.id for t in c.list_triggers("deploy")] == ["tr-2"]
        assert c.list_triggers(workflow="nope") == []

        paused = c.pause_trigger("tr-1")
        assert paused.paused and paused.id == "tr-1"
        assert c.list_triggers("report")[0].paused
        assert not c.resume_trigger("tr-1").paused

        execution = c.fire_trigger("tr-1")
        assert isinstance(execution, mantle.Execution)
        assert (execution.id, execution.status) == ("ex-10", "pending")
        assert execution.trigger == {"type": "cron", "trigger_id": "tr-1", "manual": True}
        assert execution.inputs == {"team": "ops"}

        with pytest.raises(errors.NotFound, match="trigger nope not found"):
            c.pause_trigger("nope")
        with pytest.raises(errors.NotFound):
            c.fire_trigger("nope")
        before = len(servicer.requests)
        with pytest.raises(ValueError):
            c.resume_trigger("")
        assert len(servicer.requests) == before  # refused before anything was sent

    assert [type(r).__name__ for r in servicer.requests[:7]] == [
        "ListTriggersRequest",
        "ListTriggersRequest",
        "ListTriggersRequest",
        "PauseTriggerRequest",
        "ListTriggersRequest",
        "ResumeTriggerRequest",
        "FireTriggerRequest",
    ]
    assert [r.workflow for r in servicer.requests[:3]] == ["", "deploy", "nope"]
    # Triggers belong to the tenant: x-mantle-tenant goes with every call.
    assert set(servicer.tenants) == {"acme"}


@pytest.mark.asyncio
async def test_aio_client_lists_pauses_resumes_and_fires(fake: tuple[str, _FakeTriggers]) -> None:
    address, servicer = fake
    async with mantle.aio.Client(address, token="tok") as c:
        assert [t.id for t in await c.list_triggers()] == ["tr-1", "tr-2"]
        assert [t.id for t in await c.list_triggers("report")] == ["tr-1"]
        assert (await c.pause_trigger("tr-1")).paused
        assert not (await c.resume_trigger("tr-1")).paused
        execution = await c.fire_trigger("tr-1")
        assert execution.id == "ex-10"
        assert execution.trigger == {"type": "cron", "trigger_id": "tr-1", "manual": True}
        with pytest.raises(errors.NotFound):
            await c.resume_trigger("nope")
        with pytest.raises(ValueError):
            await c.fire_trigger("")
    assert servicer.requests[1].workflow == "report"


def test_sync_and_aio_expose_the_same_trigger_methods() -> None:
    names = {"list_triggers", "pause_trigger", "resume_trigger", "fire_trigger"}
    assert names <= set(vars(mantle.Client))
    assert names <= set(vars(mantle.aio.Client))
    assert {"Trigger", "TriggerFire"} <= set(mantle.__all__)
    for name in names:
        sync = inspect.signature(getattr(mantle.Client, name))
        aio = inspect.signature(getattr(mantle.aio.Client, name))
        assert list(sync.parameters) == list(aio.parameters), name
        assert [p.default for p in sync.parameters.values()] == [
            p.default for p in aio.parameters.values()
        ], name
        assert getattr(mantle.Client, name).__doc__, name
        assert getattr(mantle.aio.Client, name).__doc__, name
    assert inspect.signature(mantle.Client.list_triggers).parameters["workflow"].default is None
