"""``wait()`` and ``follow()`` across a daemon restart (a deploy), with the sync and the
asyncio client: each test runs a daemon of its own (conftest.restartable_daemon), starts
an execution that sleeps 3 s and then sets its output, and stops the daemon in the middle
(SIGTERM or ``kill -9``), keeps it down for 2 s so the client really finds it unreachable,
and starts it again on the same data dir and port. The client must ride it out: the right
result, every event exactly once, one WARNING for the outage and one INFO line after."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import mantle
import mantle.aio
from mantle.types import ExecutionEvent
from mantle.v1 import execution_pb2

from .conftest import RestartableDaemon

pytestmark = pytest.mark.daemon

NAP = """\
name: nap
inputs:
  who: {type: string}
steps:
  - name: nap
    action: core/sleep
    params:
      duration: 3s
  - name: finish
    action: core/set
    depends_on: [nap]
    params:
      greeting: "Hello, {{ inputs.who }}!"
outputs:
  greeting: steps.finish.output.greeting
"""

TIMEOUT = 60.0
"""Seconds each wait or follow may take at most (a restart takes about 10)."""
DOWNTIME = 2.0
"""Seconds the daemon stays down: long enough for the client to find it unreachable."""


class _Tap:
    """Wraps a client's WatchExecution to record, in order, each watch's ``after_seq``
    (``("watch", n)``) and each event a stream delivers (``("event", seq)``); ``receiving``
    is set when the first event arrives, so a test knows the client is mid-stream."""

    def __init__(self, client: mantle.Client | mantle.aio.Client, aio: bool = False) -> None:
        stub = client._executions
        self._watch = stub.WatchExecution
        stub.WatchExecution = self._open  # type: ignore[assignment]
        self._aio = aio
        self.log: list[tuple[str, int]] = []
        self.receiving = threading.Event()

    def _open(self, request: execution_pb2.WatchExecutionRequest, **kwargs: Any) -> Any:
        self.log.append(("watch", request.after_seq))
        call = self._watch(request, **kwargs)
        return _AioTappedCall(call, self) if self._aio else _TappedCall(call, self)

    def delivered(self, seq: int) -> None:
        self.log.append(("event", seq))
        self.receiving.set()

    def check_resumed_without_repeats(self) -> None:
        """Every watch started after the last event seen, every event was new, and at
        least one watch resumed mid-log (after the restart)."""
        last = 0
        for what, n in self.log:
            if what == "watch":
                assert n == last, self.log
            else:
                assert n > last, self.log
                last = n
        assert any(what == "watch" and n > 0 for what, n in self.log), self.log


class _TappedCall:
    def __init__(self, call: Any, tap: _Tap) -> None:
        self._call = call
        self._tap = tap

    def __iter__(self) -> _TappedCall:
        return self

    def __next__(self) -> Any:
        msg = next(self._call)
        self._tap.delivered(msg.seq)
        return msg

    def cancel(self) -> bool:
        return bool(self._call.cancel())


class _AioTappedCall:
    def __init__(self, call: Any, tap: _Tap) -> None:
        self._call = call
        self._messages = call.__aiter__()
        self._tap = tap

    def __aiter__(self) -> _AioTappedCall:
        return self

    async def __anext__(self) -> Any:
        msg = await self._messages.__anext__()
        self._tap.delivered(msg.seq)
        return msg

    def cancel(self) -> bool:
        return bool(self._call.cancel())


@pytest.fixture
def rd(
    restartable_daemon: RestartableDaemon, caplog: pytest.LogCaptureFixture
) -> RestartableDaemon:
    """The test's own daemon, the workflow applied, the ``mantle`` logger captured."""
    caplog.set_level(logging.INFO, logger="mantle")
    with restartable_daemon.client() as c:
        c.apply(NAP, "nap.yaml")
    return restartable_daemon


def _check_outage_logged_once(
    caplog: pytest.LogCaptureFixture, address: str, execution_id: str
) -> None:
    records = [r for r in caplog.records if r.name == "mantle"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(warnings) == 1, warnings
    [warning] = warnings
    assert f"the daemon at {address} is unreachable (UNAVAILABLE" in warning
    assert f"execution {execution_id} goes on on the server" in warning
    assert "reconnecting" in warning
    assert len(infos) == 1, infos
    assert f"the daemon at {address} is reachable again" in infos[0]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]


def _check_completed(c: mantle.Client, execution_id: str, done: mantle.Execution) -> None:
    assert done.id == execution_id
    assert done.status == "completed", done.error
    assert done.outputs == {"greeting": "Hello, Ada!"}
    attempts = {a.step_name: a for a in c.list_step_attempts(execution_id)}
    assert attempts["finish"].status == "completed"
    assert attempts["finish"].output == {"greeting": "Hello, Ada!"}
    assert c.get_execution(execution_id) == done


def _check_followed(
    c: mantle.Client, execution_id: str, events: list[ExecutionEvent], restarted_at: int
) -> None:
    """``events`` are all of the execution's events, once each, in order, ending with the
    completed event; some arrived after the restart, which began after ``restarted_at``
    of them."""
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), seqs
    last = events[-1]
    assert last.kind == "execution_status" and last.execution_status == "completed", last
    assert last.terminal and not any(e.terminal for e in events[:-1])
    # Exactly the recorded log: nothing missed, nothing twice.
    assert events == list(c.watch(execution_id))
    later = events[restarted_at:]
    assert ("finish", "completed") in [(e.step_name, e.step_status) for e in later], later


def _is_nap_running(event: ExecutionEvent) -> bool:
    return (event.kind, event.step_name, event.step_status) == ("step_status", "nap", "running")


# -- sync client ------------------------------------------------------------------------------


def test_sync_wait_survives_a_graceful_restart(
    rd: RestartableDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    with rd.client() as c, ThreadPoolExecutor(1) as pool:
        tap = _Tap(c)
        execution = c.start_execution("nap", {"who": "Ada"})
        waiting = pool.submit(c.wait, execution.id, TIMEOUT)
        assert tap.receiving.wait(TIMEOUT), "wait() received no event"
        assert rd.restart(signal.SIGTERM, DOWNTIME) == 0
        done = waiting.result(TIMEOUT)
        _check_completed(c, execution.id, done)
        tap.check_resumed_without_repeats()
    _check_outage_logged_once(caplog, rd.address, execution.id)


def test_sync_follow_survives_kill_9(
    rd: RestartableDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    with rd.client() as c, ThreadPoolExecutor(1) as pool:
        tap = _Tap(c)
        execution = c.start_execution("nap", {"who": "Ada"})
        events: list[ExecutionEvent] = []
        restarting = None
        for event in c.follow(execution.id, timeout=TIMEOUT):
            events.append(event)
            if restarting is None and _is_nap_running(event):
                restarted_at = len(events)
                restarting = pool.submit(rd.restart, signal.SIGKILL, DOWNTIME)
        assert restarting is not None, events
        assert restarting.result(TIMEOUT) == -signal.SIGKILL
        tap.check_resumed_without_repeats()
        _check_followed(c, execution.id, events, restarted_at)
        _check_completed(c, execution.id, c.get_execution(execution.id))
    _check_outage_logged_once(caplog, rd.address, execution.id)


# -- asyncio client ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aio_wait_survives_kill_9(
    rd: RestartableDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    async with rd.aio_client() as c:
        tap = _Tap(c, aio=True)
        execution = await c.start_execution("nap", {"who": "Ada"})
        waiting = asyncio.create_task(c.wait(execution.id, timeout=TIMEOUT))
        receiving = await asyncio.to_thread(tap.receiving.wait, TIMEOUT)
        assert receiving, "wait() received no event"
        assert not waiting.done()
        assert await asyncio.to_thread(rd.restart, signal.SIGKILL, DOWNTIME) == -signal.SIGKILL
        done = await asyncio.wait_for(waiting, TIMEOUT)
        tap.check_resumed_without_repeats()
    with rd.client() as sync:
        _check_completed(sync, execution.id, done)
    _check_outage_logged_once(caplog, rd.address, execution.id)


@pytest.mark.asyncio
async def test_aio_follow_survives_a_graceful_restart(
    rd: RestartableDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    async with rd.aio_client() as c:
        tap = _Tap(c, aio=True)
        execution = await c.start_execution("nap", {"who": "Ada"})
        events: list[ExecutionEvent] = []
        restarting: asyncio.Future[int] | None = None
        async for event in c.follow(execution.id, timeout=TIMEOUT):
            events.append(event)
            if restarting is None and _is_nap_running(event):
                restarted_at = len(events)
                restarting = asyncio.ensure_future(
                    asyncio.to_thread(rd.restart, signal.SIGTERM, DOWNTIME)
                )
        assert restarting is not None, events
        assert await asyncio.wait_for(restarting, TIMEOUT) == 0
        tap.check_resumed_without_repeats()
    with rd.client() as sync:
        _check_followed(sync, execution.id, events, restarted_at)
        _check_completed(sync, execution.id, sync.get_execution(execution.id))
    _check_outage_logged_once(caplog, rd.address, execution.id)
