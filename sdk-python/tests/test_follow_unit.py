"""Unit tests (no daemon) of how ``wait()`` and ``follow()`` of both clients ride out a
daemon that goes away: the shared ``_common.Follower`` and the two clients' loops, driven
by a fake ExecutionService stub that plays a script of answers and failures, call by call.
(test_restart_daemon.py does the same against the real daemon, restarted.)"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest

import mantle
import mantle.aio
from mantle import _common, errors
from mantle.v1 import execution_pb2

E = execution_pb2
ADDRESS = "127.0.0.1:1"
ID = "ex-1"
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    "Failed to connect to remote host: Connection refused"
)


class _RpcError(grpc.RpcError):
    """A failed call, as grpc raises it."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(code, details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


def refused() -> _RpcError:
    return _RpcError(grpc.StatusCode.UNAVAILABLE, REFUSED)


def dropped() -> _RpcError:
    return _RpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")


def deadline() -> _RpcError:
    return _RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


EXPIRES = deadline()
"""A watch step's error: the stream stays quiet until its deadline, then fails with it."""


_STATUS = {
    "running": E.EXECUTION_STATUS_RUNNING,
    "completed": E.EXECUTION_STATUS_COMPLETED,
    "failed": E.EXECUTION_STATUS_FAILED,
}


def _event(seq: int, status: str | None = None) -> execution_pb2.ExecutionEvent:
    """An execution_status event if ``status`` is given, else a log line."""
    if status is None:
        return E.ExecutionEvent(
            seq=seq, kind=E.ExecutionEvent.LOG, step_name="a", message=f"line {seq}"
        )
    return E.ExecutionEvent(
        seq=seq, kind=E.ExecutionEvent.EXECUTION_STATUS, execution_status=_STATUS[status]
    )


# Five events of one run, ending with "completed".
RUN = [_event(1, "running"), _event(2), _event(3), _event(4), _event(5, "completed")]

class _Script:
    """The fake daemon: answers each call with the next step of a script, and records the
    calls (``("watch", after_seq)`` or ``("get", 0)``). A step is ``("watch", (events,
    error))`` (the events the stream delivers, then the error it fails with, or None: it
    ends), ``("get", status)``, or either with an error, which the call fails with."""

    def __init__(
        self, steps: list[tuple[str, Any]], *, forever: tuple[str, Any] | None = None
    ) -> None:
        self.steps = list(steps)
        self.forever = forever
        """When the script has run out: answer every call with this (watch and get)."""
        self.calls: list[tuple[str, int]] = []

    def _next(self, kind: str) -> Any:
        if not self.steps:
            assert self.forever is not None, f"unexpected {kind} after the script: {self.calls}"
            return self.forever[1]
        expected, answer = self.steps.pop(0)
        assert expected == kind, f"expected a {expected}, got a {kind}; calls: {self.calls}"
        return answer

    def watch(
        self, request: execution_pb2.WatchExecutionRequest, timeout: float
    ) -> Iterator[Any]:
        assert request.id == ID
        self.calls.append(("watch", request.after_seq))
        answer = self._next("watch")
        if isinstance(answer, Exception):
            raise answer
        events, error = answer
        for ev in events:
            assert ev.seq > request.after_seq, "the script sends an event the request skips"
            yield ev
        if error is EXPIRES:
            time.sleep(timeout)
        if error is not None:
            raise error

    def get(self, request: execution_pb2.GetExecutionRequest) -> execution_pb2.Execution:
        assert request.id == ID
        self.calls.append(("get", 0))
        answer = self._next("get")
        if isinstance(answer, Exception):
            raise answer
        return E.Execution(id=ID, status=_STATUS[answer], outputs_json='{"ok": true}')


class _SyncCall:
    def __init__(self, messages: Iterator[Any]) -> None:
        self._messages = messages
        self.cancelled = False

    def __iter__(self) -> Iterator[Any]:
        return self._messages

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class _SyncStub:
    def __init__(self, script: _Script) -> None:
        self.script = script
        self.opened: list[_SyncCall] = []

    def WatchExecution(self, request: Any, **kwargs: Any) -> _SyncCall:  # noqa: N802
        assert kwargs["timeout"] > 0
        self.opened.append(_SyncCall(self.script.watch(request, kwargs["timeout"])))
        return self.opened[-1]

    def GetExecution(self, request: Any, **kwargs: Any) -> Any:  # noqa: N802
        return self.script.get(request)


class _AioCall:
    def __init__(self, messages: Iterator[Any]) -> None:
        self._messages = messages

    async def _aiter(self) -> AsyncIterator[Any]:
        for msg in self._messages:
            await asyncio.sleep(0)
            yield msg

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    def cancel(self) -> bool:
        return True


class _AioStub:
    def __init__(self, script: _Script) -> None:
        self.script = script

    def WatchExecution(self, request: Any, **kwargs: Any) -> _AioCall:  # noqa: N802
        assert kwargs["timeout"] > 0
        return _AioCall(self.script.watch(request, kwargs["timeout"]))

    async def GetExecution(self, request: Any, **kwargs: Any) -> Any:  # noqa: N802
        return self.script.get(request)


def _sync_client(script: _Script) -> mantle.Client:
    c = mantle.Client(ADDRESS, token="tok")
    c._executions = _SyncStub(script)  # type: ignore[assignment]
    return c


def _sync_stub(c: mantle.Client) -> _SyncStub:
    stub = c._executions
    assert isinstance(stub, _SyncStub)
    return stub


def _aio_client(script: _Script) -> mantle.aio.Client:
    c = mantle.aio.Client(ADDRESS, token="tok")
    c._executions = _AioStub(script)  # type: ignore[assignment]
    return c


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Makes the pauses between attempts short, and records the failures-in-a-row count
    each was asked for (the real delays: test_rewatch_delay_grows_and_caps)."""
    asked: list[int] = []

    def short(drops: int) -> float:
        asked.append(drops)
        return 0.01

    monkeypatch.setattr(_common, "rewatch_delay", short)
    return asked


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[[], list[tuple[int, str]]]:
    """The ``mantle`` logger's records so far, as (level, message)."""
    caplog.set_level(logging.INFO, logger="mantle")
    return lambda: [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "mantle"]


# The stream drops after two events; the daemon is down for the next three calls (a poll,
# a watch, a poll), then answers; the watch resumes after seq 2.
OUTAGE = [
    ("watch", (RUN[:2], dropped())),
    ("get", refused()),
    ("watch", refused()),
    ("get", refused()),
    ("watch", (RUN[2:], None)),
    ("get", "completed"),
]
OUTAGE_CALLS = [("watch", 0), ("get", 0), ("watch", 2), ("get", 0), ("watch", 2), ("get", 0)]


def _check_outage_logs(logs: list[tuple[int, str]]) -> None:
    assert [level for level, _ in logs] == [logging.WARNING, logging.INFO], logs
    warning, info = logs[0][1], logs[1][1]
    assert warning.startswith(
        f"the daemon at {ADDRESS} is unreachable (UNAVAILABLE: Connection refused); "
        f"execution {ID} goes on on the server; reconnecting"
    ), warning
    assert info.startswith(f"the daemon at {ADDRESS} is reachable again after "), info
    assert info.endswith(f"following execution {ID} from seq 2"), info


# -- sync ---------------------------------------------------------------------------------


def test_follow_reconnects_and_resumes_after_the_last_event(
    pauses: list[int], logs: Callable[[], list[tuple[int, str]]]
) -> None:
    script = _Script([*OUTAGE, ("watch", ([], None))])  # the last: catching up, nothing new
    with _sync_client(script) as c:
        events = list(c.follow(ID, timeout=10))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[-1].terminal and events[-1].execution_status == "completed"
    assert script.calls == [*OUTAGE_CALLS, ("watch", 5)]
    assert pauses == [1, 2]  # one pause per failed round, growing
    _check_outage_logs(logs())


def test_wait_reconnects_and_resumes_after_the_last_event(
    pauses: list[int], logs: Callable[[], list[tuple[int, str]]]
) -> None:
    script = _Script(OUTAGE)
    with _sync_client(script) as c:
        done = c.wait(ID, timeout=10)
    assert done.status == "completed" and done.outputs == {"ok": True}
    assert script.calls == OUTAGE_CALLS  # no catching up: wait needs no events
    assert pauses == [1, 2]
    _check_outage_logs(logs())


def test_follow_starts_after_after_seq() -> None:
    script = _Script([("watch", (RUN[3:], None)), ("get", "completed"), ("watch", ([], None))])
    with _sync_client(script) as c:
        assert [e.seq for e in c.follow(ID, after_seq=3)] == [4, 5]
        assert script.calls == [("watch", 3), ("get", 0), ("watch", 5)]
        with pytest.raises(ValueError, match="after_seq"):
            c.follow(ID, after_seq=-1)
        with pytest.raises(ValueError, match="timeout"):
            c.follow(ID, timeout=0)


@pytest.mark.parametrize(
    "code, error",
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
    ],
)
def test_answers_raise_at_once(
    code: grpc.StatusCode,
    error: type[errors.MantleError],
    logs: Callable[[], list[tuple[int, str]]],
) -> None:
    script = _Script([("watch", _RpcError(code, "no"))])
    with _sync_client(script) as c:
        with pytest.raises(error):
            c.wait(ID, timeout=10)
    assert script.calls == [("watch", 0)]
    script = _Script([("watch", _RpcError(code, "no"))])
    with _sync_client(script) as c:
        with pytest.raises(error):
            next(c.follow(ID))
    assert script.calls == [("watch", 0)]
    assert logs() == []


def test_not_found_during_an_outage_raises_at_once(
    pauses: list[int], logs: Callable[[], list[tuple[int, str]]]
) -> None:
    script = _Script(
        [
            ("watch", refused()),
            ("get", refused()),
            ("watch", refused()),
            ("get", _RpcError(grpc.StatusCode.NOT_FOUND, f"execution {ID} not found")),
        ]
    )
    with _sync_client(script) as c:
        with pytest.raises(errors.NotFound, match="not found"):
            c.wait(ID)
    assert script.calls == [("watch", 0), ("get", 0), ("watch", 0), ("get", 0)]
    assert [level for level, _ in logs()] == [logging.WARNING]


def test_the_timeout_holds_while_the_daemon_is_unreachable(
    logs: Callable[[], list[tuple[int, str]]],
) -> None:
    # The real pauses: 0.25 s, then what is left of the 0.5 s.
    script = _Script([], forever=("any", refused()))
    with _sync_client(script) as c:
        start = time.monotonic()
        with pytest.raises(TimeoutError) as exc:
            c.wait(ID, timeout=0.5)
        took = time.monotonic() - start
    assert 0.5 <= took < 1.5, took
    assert str(exc.value).startswith(f"execution {ID} did not finish within 0.5 s: ")
    assert f"the daemon at {ADDRESS} has been unreachable for " in str(exc.value)
    assert "(UNAVAILABLE: Connection refused)" in str(exc.value)
    assert len(script.calls) >= 4  # it kept trying
    [(level, message)] = logs()  # one warning however many attempts failed
    assert level == logging.WARNING and "unreachable" in message


def test_a_retried_execution_is_followed_into_its_next_run(pauses: list[int]) -> None:
    # The first run fails (seq 2); GetExecution then finds it running again (retried)
    # after the terminal event and after the stream's end, and the watch from seq 2 brings
    # the second run, which completes.
    failed_run = [_event(1, "running"), _event(2, "failed")]
    second_run = [_event(3, "running"), _event(4), _event(5, "completed")]
    steps: list[tuple[str, Any]] = [
        ("watch", (failed_run, None)),
        ("get", "running"),
        ("get", "running"),
        ("watch", (second_run, None)),
        ("get", "completed"),
    ]
    calls = [("watch", 0), ("get", 0), ("get", 0), ("watch", 2), ("get", 0)]
    script = _Script([*steps, ("watch", ([], None))])
    with _sync_client(script) as c:
        events = list(c.follow(ID))
    assert [(e.seq, e.execution_status) for e in events if e.kind == "execution_status"] == [
        (1, "running"), (2, "failed"), (3, "running"), (5, "completed"),
    ]
    assert script.calls == [*calls, ("watch", 5)]
    assert pauses == [1]
    script = _Script(steps)
    with _sync_client(script) as c:
        assert c.wait(ID).status == "completed"
    assert script.calls == calls


def test_follow_reads_the_events_after_a_terminal_one_of_a_finished_execution(
    pauses: list[int],
) -> None:
    # The first run failed at seq 2; by the time GetExecution looks, a retry has run and
    # completed (seq 3-5): follow reads those before it ends, wait does not need them.
    steps: list[tuple[str, Any]] = [
        ("watch", ([_event(1, "running"), _event(2, "failed")], None)),
        ("get", "completed"),
    ]
    script = _Script(
        [
            *steps,
            ("watch", ([_event(3, "running"), _event(4), _event(5, "completed")], None)),
            ("watch", ([], None)),
        ]
    )
    with _sync_client(script) as c:
        events = list(c.follow(ID))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[-1].execution_status == "completed"
    assert script.calls == [("watch", 0), ("get", 0), ("watch", 2), ("watch", 5)]
    assert pauses == []
    script = _Script(steps)
    with _sync_client(script) as c:
        assert c.wait(ID).status == "completed"
    assert script.calls == [("watch", 0), ("get", 0)]


def test_an_expired_watch_window_is_no_outage(
    pauses: list[int],
    logs: Callable[[], list[tuple[int, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A quiet stream reaching its deadline (WATCH_WINDOW): poll, and watch again at once.
    monkeypatch.setattr(_common, "WATCH_WINDOW", 0.05)
    script = _Script(
        [
            ("watch", (RUN[:1], EXPIRES)),
            ("get", "running"),
            ("watch", (RUN[1:], None)),
            ("get", "completed"),
        ]
    )
    with _sync_client(script) as c:
        assert c.wait(ID).status == "completed"
    assert script.calls == [("watch", 0), ("get", 0), ("watch", 1), ("get", 0)]
    assert pauses == [] and logs() == []


def test_an_early_deadline_exceeded_pauses(pauses: list[int]) -> None:
    # DEADLINE_EXCEEDED long before the watch's deadline (say, from a proxy): not a watch
    # that ran its course, so it pauses like any failure rather than spinning.
    script = _Script(
        [
            ("watch", (RUN[:1], deadline())),
            ("get", "running"),
            ("watch", deadline()),
            ("get", "running"),
            ("watch", (RUN[1:], None)),
            ("get", "completed"),
        ]
    )
    with _sync_client(script) as c:
        assert c.wait(ID).status == "completed"
    assert script.calls == [
        ("watch", 0), ("get", 0), ("watch", 1), ("get", 0), ("watch", 1), ("get", 0),
    ]
    assert pauses == [1, 2]


def test_follow_catches_up_across_an_outage_after_the_execution_finished(
    pauses: list[int], logs: Callable[[], list[tuple[int, str]]]
) -> None:
    # The stream drops after seq 2; the poll finds the execution completed meanwhile; the
    # daemon then goes away before follow has read seq 3-5: it reconnects and reads them.
    script = _Script(
        [
            ("watch", (RUN[:2], dropped())),
            ("get", "completed"),
            ("watch", refused()),
            ("watch", refused()),
            ("watch", (RUN[2:], None)),
            ("watch", ([], None)),
        ]
    )
    with _sync_client(script) as c:
        events = list(c.follow(ID, timeout=10))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert script.calls == [
        ("watch", 0), ("get", 0), ("watch", 2), ("watch", 2), ("watch", 2), ("watch", 5),
    ]
    assert pauses == [1, 2]
    _check_outage_logs(logs())


def test_follow_times_out_catching_up_with_a_finished_execution() -> None:
    script = _Script(
        [("watch", (RUN[:2], dropped())), ("get", "completed")], forever=("any", refused())
    )
    with _sync_client(script) as c:
        events = c.follow(ID, timeout=0.4)
        assert [next(events).seq, next(events).seq] == [1, 2]
        with pytest.raises(TimeoutError) as exc:
            next(events)
    assert str(exc.value).startswith(
        f"execution {ID} has finished, but its events after seq 2 could not be read "
        f"within 0.4 s: the daemon at {ADDRESS} has been unreachable for "
    )


def test_a_refused_token_names_its_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("MANTLE_TOKEN", raising=False)
    monkeypatch.setenv("MANTLE_DATA_DIR", str(tmp_path))
    script = _Script([("watch", _RpcError(grpc.StatusCode.UNAUTHENTICATED, "invalid token"))])
    with _sync_client(script) as c:
        with pytest.raises(errors.Unauthenticated) as exc:
            c.wait(ID)
    assert exc.value.token_source == "the token given with the token argument"
    assert str(exc.value) == (
        "UNAUTHENTICATED: invalid token (sent the token given with the token argument)"
    )
    monkeypatch.setenv("MANTLE_TOKEN", "from-env")
    script = _Script(
        [("watch", refused()), ("get", _RpcError(grpc.StatusCode.PERMISSION_DENIED, "scope"))]
    )
    c = mantle.Client(ADDRESS)
    c._executions = _SyncStub(script)  # type: ignore[assignment]
    with c, pytest.raises(errors.PermissionDenied, match=r"\(sent the token in MANTLE_TOKEN\)$"):
        list(c.follow(ID))


def test_closing_follow_early_cancels_the_stream() -> None:
    script = _Script([("watch", (RUN, None))])
    with _sync_client(script) as c:
        events = c.follow(ID)
        assert next(events).seq == 1
        events.close()  # type: ignore[attr-defined]
        assert [call.cancelled for call in _sync_stub(c).opened] == [True]
    assert script.calls == [("watch", 0)]


# -- asyncio --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aio_follow_and_wait_reconnect_and_resume(
    pauses: list[int], logs: Callable[[], list[tuple[int, str]]]
) -> None:
    script = _Script([*OUTAGE, ("watch", ([], None))])
    async with _aio_client(script) as c:
        events = [e async for e in c.follow(ID, timeout=10)]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5] and events[-1].terminal
    assert script.calls == [*OUTAGE_CALLS, ("watch", 5)]
    assert pauses == [1, 2]
    _check_outage_logs(logs())

    script = _Script(OUTAGE)
    async with _aio_client(script) as c:
        done = await c.wait(ID, timeout=10)
    assert done.status == "completed" and script.calls == OUTAGE_CALLS


@pytest.mark.asyncio
async def test_aio_follow_catches_up_across_an_outage(
    pauses: list[int], logs: Callable[[], list[tuple[int, str]]]
) -> None:
    script = _Script(
        [
            ("watch", (RUN[:2], dropped())),
            ("get", "completed"),
            ("watch", refused()),
            ("watch", (RUN[2:], None)),
            ("watch", ([], None)),
        ]
    )
    async with _aio_client(script) as c:
        events = [e async for e in c.follow(ID, timeout=10)]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert script.calls == [("watch", 0), ("get", 0), ("watch", 2), ("watch", 2), ("watch", 5)]
    assert pauses == [1]
    _check_outage_logs(logs())


@pytest.mark.asyncio
async def test_aio_wait_cancelled_cancels_the_stream() -> None:
    receiving = asyncio.Event()
    cancelled: list[bool] = []

    class _QuietCall:
        """One event, then silence: the stream stays open."""

        async def _aiter(self) -> AsyncIterator[Any]:
            yield RUN[0]
            receiving.set()
            await asyncio.Event().wait()

        def __aiter__(self) -> AsyncIterator[Any]:
            return self._aiter()

        def cancel(self) -> bool:
            cancelled.append(True)
            return True

    async with _aio_client(_Script([])) as c:
        stub = c._executions
        assert isinstance(stub, _AioStub)
        stub.WatchExecution = lambda request, **kw: _QuietCall()
        waiting = asyncio.create_task(c.wait(ID))
        await asyncio.wait_for(receiving.wait(), 5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert cancelled == [True]


@pytest.mark.asyncio
async def test_aio_answers_raise_at_once(pauses: list[int]) -> None:
    script = _Script([("watch", refused()), ("get", _RpcError(grpc.StatusCode.PERMISSION_DENIED))])
    async with _aio_client(script) as c:
        with pytest.raises(errors.PermissionDenied):
            await c.wait(ID)
    assert script.calls == [("watch", 0), ("get", 0)]
    script = _Script([("watch", _RpcError(grpc.StatusCode.NOT_FOUND))])
    async with _aio_client(script) as c:
        with pytest.raises(errors.NotFound):
            async for _ in c.follow(ID):
                pass
    assert script.calls == [("watch", 0)]


@pytest.mark.asyncio
async def test_aio_timeout_holds_while_the_daemon_is_unreachable(
    logs: Callable[[], list[tuple[int, str]]],
) -> None:
    script = _Script([], forever=("any", refused()))
    async with _aio_client(script) as c:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="has been unreachable"):
            await c.wait(ID, timeout=0.5)
        assert 0.5 <= time.monotonic() - start < 1.5
        with pytest.raises(TimeoutError):
            async for _ in c.follow(ID, timeout=0.3):
                pass
    assert [level for level, _ in logs()] == [logging.WARNING, logging.WARNING]  # one per call


# -- the shared bookkeeping -----------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_follower_pauses_grow_to_5_s_and_stop_at_the_timeout() -> None:
    clock = _Clock()
    f = _common.Follower(ID, ADDRESS, 0, 30, drain=False)
    f.start(clock)
    assert [f.pause() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert f.watch_window() == 30
    clock.now += 28
    assert f.pause() == 2.0  # what is left of the timeout
    assert f.call_timeout(30.0) == 2.0 and f.call_timeout(None) == 2.0
    assert f.accept(_event(1))  # an event resets the pauses
    assert f.pause() == 0.25
    assert not f.accept(_event(1))  # seen already
    clock.now += 2
    assert f.pause() == 0.0
    with pytest.raises(TimeoutError, match=f"^execution {ID} did not finish within 30 s$"):
        f.watch_window()


def test_follower_logs_each_outage_once(logs: Callable[[], list[tuple[int, str]]]) -> None:
    clock = _Clock()
    f = _common.Follower(ID, ADDRESS, 7, None, drain=True)
    f.start(clock)
    assert f.watch_window() == _common.WATCH_WINDOW and f.call_timeout(None) is None
    assert not f.stream_failed(dropped())  # a dropped stream alone is no outage
    assert logs() == [] and not f.unreachable
    for _ in range(3):
        f.call_failed(refused())
    assert f.unreachable and len(logs()) == 1
    assert "reconnecting until it answers" in logs()[0][1]
    clock.now += 4.25
    assert not f.polled(E.Execution(id=ID, status=E.EXECUTION_STATUS_RUNNING))
    assert not f.unreachable
    assert logs()[1] == (
        logging.INFO,
        (
            f"the daemon at {ADDRESS} is reachable again after 4.2 s; following execution "
            f"{ID} from seq 7"
        ),
    )
    f.call_failed(_RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert len(logs()) == 3 and "(DEADLINE_EXCEEDED: Deadline Exceeded)" in logs()[2][1]
    with pytest.raises(errors.FailedPrecondition):
        f.call_failed(_RpcError(grpc.StatusCode.FAILED_PRECONDITION, "no"))
    with pytest.raises(errors.ResourceExhausted):
        f.stream_failed(_RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many watches"))
    window = f.watch_window()
    assert not f.stream_failed(deadline())  # right away: not the window expiring
    clock.now += window
    assert f.stream_failed(deadline())  # the watch ran its course


def test_short_reason() -> None:
    assert _common.short_reason(refused()) == "UNAVAILABLE: Connection refused"
    assert _common.short_reason(dropped()) == "UNAVAILABLE: Socket closed"
    assert _common.short_reason(_RpcError(grpc.StatusCode.UNAVAILABLE)) == "UNAVAILABLE"
    long = _common.short_reason(_RpcError(grpc.StatusCode.INTERNAL, "x" * 500))
    assert long.startswith("INTERNAL: xxx") and long.endswith("...") and len(long) < 200
