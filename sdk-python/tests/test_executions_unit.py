"""Unit tests of the execution API that need no daemon: protobuf conversion, request
construction, and watch/wait against an in-process grpc server standing in for the daemon
(including a stream that drops and must be resumed with ``after_seq``)."""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

import mantle
import mantle.aio
from mantle import _common, errors
from mantle.types import (
    TERMINAL_STATUSES,
    Execution,
    ExecutionEvent,
    StepAttempt,
    execution_status_name,
    execution_status_value,
    step_status_name,
)
from mantle.v1 import common_pb2, execution_pb2, execution_pb2_grpc

E = execution_pb2


def _ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


# -- conversions --------------------------------------------------------------------------


def test_execution_from_proto() -> None:
    msg = E.Execution(
        id="0190-1",
        workflow="hello",
        version=3,
        status=E.EXECUTION_STATUS_COMPLETED,
        inputs_json='{"who": "Ada", "n": 2}',
        outputs_json='{"message": "Hello, Ada!"}',
        create_time=_ts(1_700_000_000),
        start_time=_ts(1_700_000_000, 500_000_000),
        end_time=_ts(1_700_000_002),
        trigger_json='{"type": "api"}',
    )
    e = Execution.from_proto(msg)
    assert e == Execution(
        id="0190-1",
        workflow="hello",
        version=3,
        status="completed",
        inputs={"who": "Ada", "n": 2},
        outputs={"message": "Hello, Ada!"},
        error="",
        create_time=_utc(1_700_000_000),
        start_time=_utc(1_700_000_000.5),
        end_time=_utc(1_700_000_002),
        trigger={"type": "api"},
    )
    assert e.finished
    assert e.duration == timedelta(seconds=1.5)
    with pytest.raises(AttributeError):
        e.status = "failed"  # type: ignore[misc]


def test_execution_defaults_for_unset_fields() -> None:
    e = Execution.from_proto(E.Execution(id="x", status=E.EXECUTION_STATUS_TIMED_OUT, error="late"))
    assert e.status == "timed_out"
    # Empty JSON fields (what a BASIC listing sends) are None, never an invented {}.
    assert e.inputs is None and e.outputs is None and e.trigger is None
    assert e.create_time is None and e.end_time is None and e.duration is None
    assert e.finished and e.error == "late"
    running = Execution.from_proto(E.Execution(status=E.EXECUTION_STATUS_RUNNING, outputs_json="[1]"))
    assert not running.finished
    assert running.outputs is None  # not an object


def test_execution_model_usage() -> None:
    e = Execution.from_proto(
        E.Execution(
            id="x",
            model_usage=E.ModelUsage(input_tokens=1200, output_tokens=300, cost_usd=0.0045),
        )
    )
    assert e.model_usage is not None
    assert (e.model_usage.input_tokens, e.model_usage.output_tokens) == (1200, 300)
    assert e.model_usage.total_tokens == 1500
    assert e.model_usage.cost_usd == 0.0045
    # No model call: nothing, not zeros.
    assert Execution.from_proto(E.Execution(id="y")).model_usage is None


def test_execution_of_a_basic_listing_has_no_inputs_outputs_or_trigger() -> None:
    full = E.Execution(
        id="x",
        status=E.EXECUTION_STATUS_COMPLETED,
        inputs_json="{}",
        outputs_json='{"m": 1}',
        trigger_json='{"type": "api"}',
    )
    e = Execution.from_proto(full)
    assert (e.inputs, e.outputs, e.trigger) == ({}, {"m": 1}, {"type": "api"})
    basic = E.Execution()
    basic.CopyFrom(full)
    basic.inputs_json = basic.outputs_json = basic.trigger_json = ""
    b = Execution.from_proto(basic)
    assert (b.inputs, b.outputs, b.trigger) == (None, None, None)
    assert (b.id, b.status) == ("x", "completed")


def test_every_status_has_a_lower_case_name() -> None:
    for name, value in E.ExecutionStatus.items():
        expected = name.removeprefix("EXECUTION_STATUS_").lower()
        assert execution_status_name(value) == expected
        if value:
            assert execution_status_value(expected) == value
            assert execution_status_value(name) == value
    for step_name, step_value in E.StepStatus.items():
        assert step_status_name(step_value) == step_name.removeprefix("STEP_STATUS_").lower()
    assert execution_status_name(99) == "unspecified"
    assert TERMINAL_STATUSES == {"completed", "failed", "cancelled", "timed_out"}


def test_status_names_are_checked() -> None:
    assert execution_status_value("Timed-Out") == E.EXECUTION_STATUS_TIMED_OUT
    assert execution_status_value(E.EXECUTION_STATUS_FAILED) == E.EXECUTION_STATUS_FAILED
    with pytest.raises(ValueError, match="unknown execution status 'done'"):
        execution_status_value("done")
    with pytest.raises(ValueError):
        execution_status_value("unspecified")
    with pytest.raises(ValueError):
        execution_status_value(42)
    with pytest.raises(TypeError):
        execution_status_value(True)


def test_step_attempt_from_proto() -> None:
    a = StepAttempt.from_proto(
        E.StepAttempt(
            step_name="fetch",
            attempt=2,
            status=E.STEP_STATUS_COMPLETED,
            output_json='{"status": 200, "body": [1, 2]}',
            start_time=_ts(10),
            end_time=_ts(11),
        )
    )
    assert a == StepAttempt("fetch", 2, "completed", {"status": 200, "body": [1, 2]}, "", _utc(10), _utc(11), None)
    pending = StepAttempt.from_proto(
        E.StepAttempt(step_name="fetch", attempt=3, status=E.STEP_STATUS_PENDING, wake_time=_ts(20))
    )
    assert pending.status == "pending" and pending.output is None and pending.wake_time == _utc(20)
    odd = StepAttempt.from_proto(E.StepAttempt(output_json="not json"))
    assert odd.output == "not json" and odd.status == "unspecified"


def test_event_from_proto() -> None:
    step = ExecutionEvent.from_proto(
        E.ExecutionEvent(
            seq=3,
            time=_ts(100),
            kind=E.ExecutionEvent.STEP_STATUS,
            step_name="fetch",
            attempt=1,
            step_status=E.STEP_STATUS_FAILED,
            message="http 500",
        )
    )
    assert step == ExecutionEvent(3, _utc(100), "step_status", None, "fetch", 1, "failed", "http 500")
    assert not step.terminal
    log = ExecutionEvent.from_proto(
        E.ExecutionEvent(seq=4, kind=E.ExecutionEvent.LOG, step_name="greet", attempt=1, message="hi")
    )
    assert (log.kind, log.execution_status, log.step_status, log.message) == ("log", None, None, "hi")
    done = ExecutionEvent.from_proto(
        E.ExecutionEvent(
            seq=5, kind=E.ExecutionEvent.EXECUTION_STATUS, execution_status=E.EXECUTION_STATUS_CANCELLED
        )
    )
    assert done.kind == "execution_status" and done.execution_status == "cancelled"
    assert done.step_status is None and done.terminal
    running = ExecutionEvent.from_proto(
        E.ExecutionEvent(kind=E.ExecutionEvent.EXECUTION_STATUS, execution_status=E.EXECUTION_STATUS_RUNNING)
    )
    assert not running.terminal
    assert ExecutionEvent.from_proto(E.ExecutionEvent()).kind == "unspecified"


# -- requests -----------------------------------------------------------------------------


def test_start_request_sends_inputs_as_json() -> None:
    req = _common.start_execution_request("hello", {"who": "Ada", "n": [1, 2.5], "ok": True}, 2)
    assert req.workflow == "hello" and req.version == 2
    assert json.loads(req.inputs_json) == {"who": "Ada", "n": [1, 2.5], "ok": True}
    assert _common.start_execution_request("hello", None, 0).inputs_json == ""
    assert _common.start_execution_request("hello", {}, 0).inputs_json == ""


def test_start_request_rejects_bad_inputs() -> None:
    with pytest.raises(TypeError, match="inputs: expected a dict"):
        _common.start_execution_request("hello", [("a", 1)], 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not JSON-serializable"):
        _common.start_execution_request("hello", {"when": datetime.now()}, 0)
    with pytest.raises(TypeError, match="not JSON-serializable"):
        _common.start_execution_request("hello", {"x": float("nan")}, 0)
    with pytest.raises(ValueError, match="version"):
        _common.start_execution_request("hello", None, -1)


def test_list_request_filters() -> None:
    after = datetime(2024, 1, 1, tzinfo=timezone.utc)
    req = _common.list_executions_request("hello", "failed", after, None, 10, "tok")
    assert req.workflow == "hello" and req.status == E.EXECUTION_STATUS_FAILED
    assert req.HasField("created_after") and not req.HasField("created_before")
    assert req.created_after.ToDatetime(tzinfo=timezone.utc) == after
    assert (req.page_size, req.page_token) == (10, "tok")
    empty = _common.list_executions_request(None, None, None, None, 0, "")
    assert empty.workflow == "" and empty.status == 0
    with pytest.raises(ValueError, match="naive"):
        _common.list_executions_request(None, None, datetime(2024, 1, 1), None, 0, "")
    with pytest.raises(ValueError, match="status"):
        _common.list_executions_request(None, "done", None, None, 0, "")


def test_view_names_are_checked() -> None:
    assert _common.view_value("basic") == common_pb2.VIEW_BASIC
    assert _common.view_value("full") == common_pb2.VIEW_FULL
    assert _common.view_value("FULL") == common_pb2.VIEW_FULL
    assert _common.view_value("Basic") == common_pb2.VIEW_BASIC
    bad: Any
    for bad in ("", "summary", "VIEW_FULL", " full", None, 2, True, b"full"):
        with pytest.raises(ValueError, match=r"^view: must be 'basic' or 'full', got "):
            _common.view_value(bad)
    with pytest.raises(ValueError, match="^detail: "):
        _common.view_value("all", "detail")


def test_list_request_view() -> None:
    assert _common.list_executions_request(None, None, None, None, 0, "").view == common_pb2.VIEW_BASIC
    full = _common.list_executions_request(None, None, None, None, 0, "", "Full")
    assert full.view == common_pb2.VIEW_FULL
    basic = _common.list_executions_request("hello", None, None, None, 5, "tok", "basic")
    assert (basic.workflow, basic.page_size, basic.page_token, basic.view) == (
        "hello", 5, "tok", common_pb2.VIEW_BASIC,
    )
    with pytest.raises(ValueError, match="^view: "):
        _common.list_executions_request(None, None, None, None, 0, "", "everything")


def test_cancel_executions_request_filters() -> None:
    after = datetime(2024, 1, 1, tzinfo=timezone.utc)
    before = datetime(2024, 1, 2, 3, 0, tzinfo=timezone(timedelta(hours=2)))
    req = _common.cancel_executions_request("hello", "Running", after, before)
    assert isinstance(req, E.CancelExecutionsRequest)
    assert req.workflow == "hello" and req.status == E.EXECUTION_STATUS_RUNNING
    assert req.created_after.ToDatetime(tzinfo=timezone.utc) == after
    assert req.created_before.ToDatetime(tzinfo=timezone.utc) == before
    assert _common.cancel_executions_request(None, E.EXECUTION_STATUS_QUEUED, None, None).status == (
        E.EXECUTION_STATUS_QUEUED
    )
    # No filter is sent as no filter: the server refuses it (INVALID_ARGUMENT).
    empty = _common.cancel_executions_request(None, None, None, None)
    assert empty == E.CancelExecutionsRequest()
    assert not empty.HasField("created_after") and not empty.HasField("created_before")
    with pytest.raises(ValueError, match="status"):
        _common.cancel_executions_request(None, "done", None, None)
    with pytest.raises(ValueError, match="naive"):
        _common.cancel_executions_request(None, None, None, datetime(2024, 1, 1))


def test_delete_executions_request() -> None:
    when = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    req = _common.delete_executions_request(when, None)
    assert req.HasField("ended_before") and req.workflow == ""
    assert req.ended_before.ToDatetime(tzinfo=timezone.utc) == when
    assert _common.delete_executions_request(when, "hello").workflow == "hello"
    with pytest.raises(ValueError, match="^ended_before: naive"):
        _common.delete_executions_request(datetime(2024, 5, 1), None)
    bad: Any
    for bad in (None, timedelta(days=-1), "2024-05-01", 1_700_000_000):
        with pytest.raises(TypeError, match="^ended_before: expected an aware datetime"):
            _common.delete_executions_request(bad, None)


def test_list_step_attempts_request() -> None:
    first = _common.list_step_attempts_request("ex-1", "")
    assert (first.id, first.page_size, first.page_token, first.view) == (
        "ex-1", 1000, "", common_pb2.VIEW_FULL,
    )
    assert _common.STEP_ATTEMPTS_PAGE_SIZE == 1000
    nxt = _common.list_step_attempts_request("ex-1", "abc", "BASIC")
    assert (nxt.page_token, nxt.view) == ("abc", common_pb2.VIEW_BASIC)
    with pytest.raises(ValueError, match="^view: "):
        _common.list_step_attempts_request("ex-1", "", "outputs")


def test_watch_request_checks_after_seq() -> None:
    assert _common.watch_request("x", 7).after_seq == 7
    bad: Any
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            _common.watch_request("x", bad)


def test_rewatch_delay_grows_and_caps() -> None:
    assert _common.rewatch_delay(1) == 0.25
    assert _common.rewatch_delay(2) == 0.5
    assert _common.rewatch_delay(50) == 5.0


# -- a fake daemon --------------------------------------------------------------------------


def _event(seq: int, kind: Any, **fields: Any) -> execution_pb2.ExecutionEvent:
    return E.ExecutionEvent(seq=seq, time=_ts(1_700_000_000 + seq), kind=kind, **fields)


EVENTS = [
    _event(1, E.ExecutionEvent.EXECUTION_STATUS, execution_status=E.EXECUTION_STATUS_RUNNING),
    _event(2, E.ExecutionEvent.STEP_STATUS, step_name="a", attempt=1, step_status=E.STEP_STATUS_RUNNING),
    _event(3, E.ExecutionEvent.LOG, step_name="a", attempt=1, message="hello"),
    _event(4, E.ExecutionEvent.STEP_STATUS, step_name="a", attempt=1, step_status=E.STEP_STATUS_COMPLETED),
    _event(5, E.ExecutionEvent.EXECUTION_STATUS, execution_status=E.EXECUTION_STATUS_COMPLETED),
]


class _FakeExecutions(execution_pb2_grpc.ExecutionServiceServicer):
    """One execution, ``ex-1``, whose five events are all recorded. The first watch drops
    (UNAVAILABLE) after ``drop_after`` events; GetExecution reports it running until
    ``finish_after_gets`` calls have been made."""

    def __init__(self, drop_after: int | None = None, finish_after_gets: int = 0) -> None:
        self.drop_after = drop_after
        self.finish_after_gets = finish_after_gets
        self.watch_after_seqs: list[int] = []
        self.gets = 0
        self.list_requests: list[execution_pb2.ListExecutionsRequest] = []
        self.attempt_requests: list[execution_pb2.ListStepAttemptsRequest] = []
        self.cancel_requests: list[execution_pb2.CancelExecutionsRequest] = []
        self.delete_requests: list[Any] = []
        self.lock = threading.Lock()

    def _execution(self, status: Any) -> execution_pb2.Execution:
        return E.Execution(
            id="ex-1", workflow="hello", version=1, status=status, outputs_json='{"m": "hi"}'
        )

    def GetExecution(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.id != "ex-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"execution {request.id} not found")
        with self.lock:
            self.gets += 1
            done = self.gets > self.finish_after_gets
        return self._execution(E.EXECUTION_STATUS_COMPLETED if done else E.EXECUTION_STATUS_RUNNING)

    def WatchExecution(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.id != "ex-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"execution {request.id} not found")
        with self.lock:
            first = not self.watch_after_seqs
            self.watch_after_seqs.append(request.after_seq)
        sent = 0
        for ev in EVENTS:
            if ev.seq <= request.after_seq:
                continue
            if first and self.drop_after is not None and sent == self.drop_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
            yield ev
            sent += 1

    def ListExecutions(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.list_requests.append(request)
        page = int(request.page_token or "0")
        full = request.view == common_pb2.VIEW_FULL
        resp = E.ListExecutionsResponse(
            executions=[
                E.Execution(
                    id=f"ex-{page}-{i}",
                    status=E.EXECUTION_STATUS_FAILED,
                    # Like the daemon: a BASIC listing leaves these empty.
                    inputs_json=json.dumps({"n": i}) if full else "",
                    trigger_json='{"type": "api"}' if full else "",
                )
                for i in range(2)
            ]
        )
        if page < 2:
            resp.next_page_token = str(page + 1)
        return resp

    def ListStepAttempts(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Seven attempts of ``ex-1``, in pages of at most three whatever ``page_size``
        says (as the daemon ends a page early at 3 MiB); outputs only in a FULL view."""
        if request.id != "ex-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"execution {request.id} not found")
        self.attempt_requests.append(request)
        start = int(request.page_token or "0")
        end = min(start + 3, 7)
        full = request.view == common_pb2.VIEW_FULL
        resp = E.ListStepAttemptsResponse(
            attempts=[
                E.StepAttempt(
                    step_name=f"s{i}",
                    attempt=1,
                    status=E.STEP_STATUS_COMPLETED,
                    output_json=json.dumps({"i": i}) if full else "",
                )
                for i in range(start, end)
            ]
        )
        if end < 7:
            resp.next_page_token = str(end)
        return resp

    def CancelExecutions(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Like the daemon: refuses a request without a filter; else asks 3 to cancel."""
        self.cancel_requests.append(request)
        if request == E.CancelExecutionsRequest():
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "set at least one of workflow, status, created_after and created_before",
            )
        return E.CancelExecutionsResponse(cancel_requested=3)

    def DeleteExecution(self, request: Any, context: grpc.ServicerContext) -> Any:
        """``ex-1`` has finished and is deleted; ``running-1`` has not; nothing else exists."""
        self.delete_requests.append(request)
        if request.id == "running-1":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "execution running-1 has not finished")
        if request.id != "ex-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"execution {request.id} not found")
        return empty_pb2.Empty()

    def DeleteExecutions(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.delete_requests.append(request)
        if not request.HasField("ended_before"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ended_before: required")
        return E.DeleteExecutionsResponse(deleted=5 if request.workflow else 7)

    def _unimplemented(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    StartExecution = _unimplemented
    CancelExecution = _unimplemented
    RetryExecution = _unimplemented


def _serve(servicer: _FakeExecutions) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    execution_pb2_grpc.add_ExecutionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def steady() -> Iterator[tuple[str, _FakeExecutions]]:
    fake = _FakeExecutions()
    for address in _serve(fake):
        yield address, fake


@pytest.fixture
def flaky() -> Iterator[tuple[str, _FakeExecutions]]:
    """The first watch drops after two events; the execution is still running at the
    first poll."""
    fake = _FakeExecutions(drop_after=2, finish_after_gets=1)
    for address in _serve(fake):
        yield address, fake


def test_watch_yields_events_in_order(steady: tuple[str, _FakeExecutions]) -> None:
    address, fake = steady
    with mantle.Client(address, token="tok") as c:
        events = list(c.watch("ex-1"))
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert [e.kind for e in events] == [
            "execution_status", "step_status", "log", "step_status", "execution_status",
        ]
        assert events[-1].terminal and events[2].message == "hello"
        assert [e.seq for e in c.watch("ex-1", after_seq=3)] == [4, 5]
        assert fake.watch_after_seqs == [0, 3]
        with pytest.raises(errors.NotFound):
            list(c.watch("nope"))


def test_watch_can_be_closed_early(steady: tuple[str, _FakeExecutions]) -> None:
    address, _ = steady
    with mantle.Client(address, token="tok") as c:
        it = c.watch("ex-1")
        assert next(it).seq == 1
        it.close()  # type: ignore[attr-defined]


def test_wait_resumes_after_a_dropped_stream(flaky: tuple[str, _FakeExecutions]) -> None:
    address, fake = flaky
    with mantle.Client(address, token="tok") as c:
        e = c.wait("ex-1", timeout=10)
    assert e.status == "completed" and e.outputs == {"m": "hi"}
    # Dropped after seq 2, polled (still running), watched again from seq 2.
    assert fake.watch_after_seqs == [0, 2]
    assert fake.gets == 2


def test_wait_returns_at_once_for_a_finished_execution(steady: tuple[str, _FakeExecutions]) -> None:
    address, fake = steady
    with mantle.Client(address, token="tok") as c:
        assert c.wait("ex-1").status == "completed"
        with pytest.raises(errors.NotFound):
            c.wait("nope")
    assert fake.watch_after_seqs[0] == 0


def test_wait_times_out() -> None:
    fake = _FakeExecutions(drop_after=0, finish_after_gets=10**6)
    for address in _serve(fake):
        with mantle.Client(address, token="tok") as c:
            start = time.monotonic()
            with pytest.raises(TimeoutError, match="ex-1"):
                c.wait("ex-1", timeout=0.6)
            assert time.monotonic() - start < 5
            with pytest.raises(ValueError):
                c.wait("ex-1", timeout=0)


def test_list_executions_follows_pages(steady: tuple[str, _FakeExecutions]) -> None:
    address, fake = steady
    with mantle.Client(address, token="tok") as c:
        found = c.list_executions(workflow="hello", status="failed", page_size=2)
    assert [e.id for e in found] == ["ex-0-0", "ex-0-1", "ex-1-0", "ex-1-1", "ex-2-0", "ex-2-1"]
    assert all(e.status == "failed" for e in found)
    assert [r.page_token for r in fake.list_requests] == ["", "1", "2"]
    assert all(r.workflow == "hello" and r.page_size == 2 for r in fake.list_requests)
    # The default view is BASIC: no inputs, outputs or trigger, and none invented.
    assert all(r.view == common_pb2.VIEW_BASIC for r in fake.list_requests)
    assert all(e.inputs is None and e.outputs is None and e.trigger is None for e in found)


def test_list_executions_view(steady: tuple[str, _FakeExecutions]) -> None:
    address, fake = steady
    with mantle.Client(address, token="tok") as c:
        found = c.list_executions(view="FULL")
        assert [r.view for r in fake.list_requests] == [common_pb2.VIEW_FULL] * 3
        assert [e.inputs for e in found] == [{"n": 0}, {"n": 1}] * 3
        assert all(e.trigger == {"type": "api"} for e in found)
        fake.list_requests.clear()
        assert [e.inputs for e in c.iter_executions(view="full", page_size=1)][:2] == [{"n": 0}, {"n": 1}]
        assert all(r.view == common_pb2.VIEW_FULL and r.page_size == 1 for r in fake.list_requests)
        fake.list_requests.clear()
        with pytest.raises(ValueError, match="^view: "):
            c.list_executions(view="detailed")
        with pytest.raises(ValueError, match="^view: "):
            next(c.iter_executions(view=None))  # type: ignore[arg-type]
    assert fake.list_requests == []  # refused before anything was sent


def test_list_step_attempts_follows_pages(steady: tuple[str, _FakeExecutions]) -> None:
    address, fake = steady
    with mantle.Client(address, token="tok") as c:
        attempts = c.list_step_attempts("ex-1")
        assert [a.step_name for a in attempts] == [f"s{i}" for i in range(7)]
        assert [a.output for a in attempts] == [{"i": i} for i in range(7)]
        assert [r.page_token for r in fake.attempt_requests] == ["", "3", "6"]
        assert all(
            (r.id, r.page_size, r.view) == ("ex-1", 1000, common_pb2.VIEW_FULL)
            for r in fake.attempt_requests
        )
        fake.attempt_requests.clear()
        basic = c.list_step_attempts("ex-1", view="Basic")
        assert len(basic) == 7 and all(a.output is None for a in basic)
        assert all(r.view == common_pb2.VIEW_BASIC for r in fake.attempt_requests)
        fake.attempt_requests.clear()
        with pytest.raises(ValueError, match="^view: "):
            c.list_step_attempts("ex-1", view="outputs")
        assert fake.attempt_requests == []
        with pytest.raises(errors.NotFound):
            c.list_step_attempts("nope")


def test_cancel_and_delete_executions(steady: tuple[str, _FakeExecutions]) -> None:
    address, fake = steady
    after = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with mantle.Client(address, token="tok") as c:
        assert c.cancel_executions(workflow="hello", status="queued", created_after=after) == 3
        [sent] = fake.cancel_requests
        assert (sent.workflow, sent.status) == ("hello", E.EXECUTION_STATUS_QUEUED)
        assert sent.created_after.ToDatetime(tzinfo=timezone.utc) == after
        assert not sent.HasField("created_before")
        with pytest.raises(errors.InvalidArgument, match="at least one"):
            c.cancel_executions()
        with pytest.raises(ValueError, match="status"):
            c.cancel_executions(status="finished")
        assert len(fake.cancel_requests) == 2  # the bad status was not sent

        c.delete_execution("ex-1")
        with pytest.raises(errors.FailedPrecondition):
            c.delete_execution("running-1")
        with pytest.raises(errors.NotFound):
            c.delete_execution("nope")
        assert [r.id for r in fake.delete_requests] == ["ex-1", "running-1", "nope"]
        fake.delete_requests.clear()

        assert c.delete_executions(ended_before=after) == 7
        assert c.delete_executions(ended_before=after, workflow="hello") == 5
        assert [(r.ended_before.ToDatetime(tzinfo=timezone.utc), r.workflow) for r in fake.delete_requests] == [
            (after, ""), (after, "hello"),
        ]
        with pytest.raises(ValueError, match="naive"):
            c.delete_executions(ended_before=datetime(2024, 1, 1))
        assert len(fake.delete_requests) == 2


@pytest.mark.asyncio
async def test_aio_cancel_and_delete_executions(steady: tuple[str, _FakeExecutions]) -> None:
    address, fake = steady
    before = datetime(2030, 1, 1, tzinfo=timezone.utc)
    async with mantle.aio.Client(address, token="tok") as c:
        assert await c.cancel_executions(created_before=before) == 3
        assert fake.cancel_requests[0].created_before.ToDatetime(tzinfo=timezone.utc) == before
        with pytest.raises(errors.InvalidArgument):
            await c.cancel_executions()
        await c.delete_execution("ex-1")
        with pytest.raises(errors.FailedPrecondition):
            await c.delete_execution("running-1")
        with pytest.raises(errors.NotFound):
            await c.delete_execution("nope")
        assert await c.delete_executions(ended_before=before, workflow="w") == 5
        with pytest.raises(TypeError, match="ended_before"):
            await c.delete_executions(ended_before=None)  # type: ignore[arg-type]
    assert [getattr(r, "id", None) or r.workflow for r in fake.delete_requests] == [
        "ex-1", "running-1", "nope", "w",
    ]


@pytest.mark.asyncio
async def test_aio_watch_and_wait(flaky: tuple[str, _FakeExecutions]) -> None:
    address, fake = flaky
    async with mantle.aio.Client(address, token="tok") as c:
        e = await c.wait("ex-1", timeout=10)
        assert e.status == "completed"
        assert fake.watch_after_seqs == [0, 2]
        events = [ev async for ev in c.watch("ex-1", after_seq=1)]
        assert [ev.seq for ev in events] == [2, 3, 4, 5]
        with pytest.raises(errors.NotFound):
            await c.get_execution("nope")
        with pytest.raises(errors.NotFound):
            async for _ in c.watch("nope"):
                pass
        listed = await c.list_executions(status="failed")
        assert len(listed) == 6
        assert all(e.inputs is None for e in listed)
        assert [r.view for r in fake.list_requests] == [common_pb2.VIEW_BASIC] * 3
        full = await c.list_executions(view="full")
        assert [e.inputs for e in full] == [{"n": 0}, {"n": 1}] * 3
        assert [e.id async for e in c.iter_executions(view="FULL")] == [e.id for e in full]
        with pytest.raises(ValueError, match="^view: "):
            await c.list_executions(view="none")

        attempts = await c.list_step_attempts("ex-1")
        assert [a.output for a in attempts] == [{"i": i} for i in range(7)]
        assert [(r.page_token, r.page_size, r.view) for r in fake.attempt_requests] == [
            (token, 1000, common_pb2.VIEW_FULL) for token in ("", "3", "6")
        ]
        basic = await c.list_step_attempts("ex-1", view="basic")
        assert [a.output for a in basic] == [None] * 7
        with pytest.raises(ValueError, match="^view: "):
            await c.list_step_attempts("ex-1", view="")


@pytest.mark.asyncio
async def test_aio_wait_times_out() -> None:
    fake = _FakeExecutions(drop_after=0, finish_after_gets=10**6)
    for address in _serve(fake):
        async with mantle.aio.Client(address, token="tok") as c:
            with pytest.raises(TimeoutError):
                await c.wait("ex-1", timeout=0.6)


def test_sync_and_aio_expose_the_same_execution_methods() -> None:
    names = {
        "start_execution", "get_execution", "list_executions", "iter_executions",
        "cancel_execution", "cancel_executions", "delete_execution", "delete_executions",
        "retry_execution", "list_step_attempts", "watch", "wait", "follow",
    }
    assert names <= set(vars(mantle.Client))
    assert names <= set(vars(mantle.aio.Client))
    assert {"Execution", "ExecutionEvent", "StepAttempt"} <= set(mantle.__all__)
    for name in names:
        sync, aio = inspect.signature(getattr(mantle.Client, name)), inspect.signature(
            getattr(mantle.aio.Client, name)
        )
        assert list(sync.parameters) == list(aio.parameters), name
        assert [p.default for p in sync.parameters.values()] == [
            p.default for p in aio.parameters.values()
        ], name
    assert inspect.signature(mantle.Client.list_executions).parameters["view"].default == "basic"
    assert inspect.signature(mantle.Client.iter_executions).parameters["view"].default == "basic"
    assert inspect.signature(mantle.Client.list_step_attempts).parameters["view"].default == "full"
    # The bulk calls take keywords only, and ended_before has no default.
    for name in ("cancel_executions", "delete_executions"):
        params = inspect.signature(getattr(mantle.Client, name)).parameters
        assert all(
            p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in params.items() if n != "self"
        ), name
    ended_before = inspect.signature(mantle.Client.delete_executions).parameters["ended_before"]
    assert ended_before.default is inspect.Parameter.empty
