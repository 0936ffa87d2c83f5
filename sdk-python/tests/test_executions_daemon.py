"""Executions against the real `mantle` daemon (see conftest.daemon): start with inputs,
wait, watch and resume a watch, failure, cancel, bulk cancel, delete one and in bulk,
retry, input checks, tenant isolation, list filters and views, paged step attempts,
scopes, asyncio, and `mantlectl run` driven as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

import mantle
import mantle.aio
from mantle import _config, errors
from mantle.v1 import common_pb2, execution_pb2, execution_pb2_grpc

from .conftest import Daemon, mantlectl_binary

pytestmark = pytest.mark.daemon

WAIT = 30.0
"""Seconds any of these executions may take at most."""

HELLO = """\
name: {name}
inputs:
  who: {{type: string, default: world}}
  times: {{type: integer, default: 1}}
steps:
  - name: greet
    action: core/log
    params:
      message: "Hello, {{{{ inputs.who }}}}!"
  - name: count
    action: core/set
    params:
      doubled: "{{{{ inputs.times * 2 }}}}"
outputs:
  message: steps.greet.output.message
  doubled: steps.count.output.doubled
"""

FAILING = """\
name: {name}
steps:
  - name: boom
    action: core/fail
    params:
      message: broken on purpose
"""

SLEEPY = """\
name: {name}
steps:
  - name: nap
    action: core/sleep
    params:
      duration: 30s
"""

# `prepare` completes; `call` fails while the local server answers 500, then succeeds.
FLAKY = """\
name: {name}
steps:
  - name: prepare
    action: core/set
    params:
      path: /flaky
  - name: call
    action: http/request
    params:
      url: "{base}{{{{ steps.prepare.output.path }}}}"
  - name: report
    action: core/log
    params:
      message: "status {{{{ steps.call.output.status }}}}"
outputs:
  status: steps.call.output.status
"""



def _sets(name: str, count: int) -> str:
    """A workflow of ``count`` independent ``core/set`` steps ``s00``, ``s01``, ...; step
    ``sNN`` outputs ``{"n": NN}``."""
    steps = "".join(
        f"  - name: s{i:02d}\n    action: core/set\n    params:\n      n: {i}\n"
        for i in range(count)
    )
    return f"name: {name}\nsteps:\n{steps}"


def _copies(name: str, count: int) -> str:
    """A workflow whose ``count`` ``core/set`` steps each output the input ``blob``."""
    steps = "".join(
        f"  - name: c{i}\n    action: core/set\n    params:\n"
        f'      blob: "{{{{ inputs.blob }}}}"\n'
        for i in range(count)
    )
    return f"name: {name}\ninputs:\n  blob: {{type: string}}\nsteps:\n{steps}"


@pytest.fixture
def tenant(op: mantle.Client, unique: str) -> str:
    name = f"exec-{unique}"
    op.create_tenant(name)
    return name


@pytest.fixture
def tc(daemon: Daemon, tenant: str) -> Iterator[mantle.Client]:
    """The operator acting on a fresh tenant."""
    with daemon.client(tenant=tenant) as c:
        yield c


def _apply(c: mantle.Client, template: str, name: str, **fields: str) -> str:
    c.apply(template.format(name=name, **fields), f"{name}.yaml")
    return name


# -- start, wait, watch ---------------------------------------------------------------------


def test_start_with_inputs_and_wait_for_outputs(tc: mantle.Client) -> None:
    _apply(tc, HELLO, "hello")
    started = tc.start_execution("hello", {"who": "Ada", "times": 21})
    assert started.workflow == "hello" and started.version == 1
    assert started.status in {"pending", "queued", "running", "completed"}
    assert started.inputs == {"who": "Ada", "times": 21}
    assert started.trigger is not None and started.trigger.get("type") == "api"

    done = tc.wait(started.id, timeout=WAIT)
    assert done.id == started.id
    assert done.status == "completed", done.error
    assert done.outputs == {"message": "Hello, Ada!", "doubled": 42}
    assert done.error == ""
    assert done.end_time is not None and done.duration is not None
    assert tc.get_execution(started.id) == done

    attempts = tc.list_step_attempts(started.id)
    assert {(a.step_name, a.attempt, a.status) for a in attempts} == {
        ("greet", 1, "completed"),
        ("count", 1, "completed"),
    }
    greet = next(a for a in attempts if a.step_name == "greet")
    assert greet.output == {"message": "Hello, Ada!"}
    assert greet.start_time is not None and greet.end_time is not None


def test_defaults_apply_and_versions_pin(tc: mantle.Client) -> None:
    _apply(tc, HELLO, "hello")
    tc.apply(HELLO.format(name="hello").replace("Hello,", "Hi,"), "hello.yaml")
    latest = tc.wait(tc.start_execution("hello").id, timeout=WAIT)
    assert latest.version == 2 and latest.inputs == {"who": "world", "times": 1}
    assert latest.outputs == {"message": "Hi, world!", "doubled": 2}
    first = tc.wait(tc.start_execution("hello", version=1).id, timeout=WAIT)
    assert first.version == 1 and first.outputs is not None
    assert first.outputs["message"] == "Hello, world!"


def test_watch_yields_events_in_order_and_resumes(tc: mantle.Client) -> None:
    _apply(tc, HELLO, "hello")
    execution = tc.start_execution("hello", {"who": "Bo"})
    events = list(tc.watch(execution.id))
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] >= 1
    last = events[-1]
    assert last.kind == "execution_status" and last.execution_status == "completed"
    assert last.terminal and not any(e.terminal for e in events[:-1])
    logs = [e for e in events if e.kind == "log"]
    assert [(e.step_name, e.attempt, e.message) for e in logs] == [("greet", 1, "Hello, Bo!")]
    steps = [(e.step_name, e.step_status) for e in events if e.kind == "step_status"]
    # A pure step (core/log) starts and ends in one checkpoint: one event, its outcome,
    # after its log line.
    assert [s for s in steps if s[0] == "greet"] == [("greet", "completed")]
    assert events.index(logs[0]) < next(
        i for i, e in enumerate(events) if e.kind == "step_status" and e.step_name == "greet"
    )
    assert all(e.time is not None for e in events)

    # Resuming after any event yields exactly the rest of the log.
    middle = len(events) // 2
    resumed = list(tc.watch(execution.id, after_seq=events[middle].seq))
    assert resumed == events[middle + 1 :]
    assert list(tc.watch(execution.id, after_seq=events[-2].seq)) == [events[-1]]


def test_failing_step_fails_the_execution(tc: mantle.Client) -> None:
    _apply(tc, FAILING, "failing")
    done = tc.wait(tc.start_execution("failing").id, timeout=WAIT)
    assert done.status == "failed"
    assert "broken on purpose" in done.error
    assert done.outputs is None
    [attempt] = tc.list_step_attempts(done.id)
    assert (attempt.step_name, attempt.status) == ("boom", "failed")
    assert "broken on purpose" in attempt.error
    events = list(tc.watch(done.id))
    assert events[-1].execution_status == "failed"
    assert any(e.step_status == "failed" and "broken on purpose" in e.message for e in events)


def test_cancel_stops_a_sleeping_step_within_2_seconds(tc: mantle.Client) -> None:
    _apply(tc, SLEEPY, "sleepy")
    execution = tc.start_execution("sleepy")
    # Let the sleep begin.
    deadline = time.monotonic() + 10
    while not any(a.status == "running" for a in tc.list_step_attempts(execution.id)):
        assert time.monotonic() < deadline, "the sleep step never started"
        time.sleep(0.05)
    started = time.monotonic()
    tc.cancel_execution(execution.id)
    done = tc.wait(execution.id, timeout=2)
    assert time.monotonic() - started < 2
    assert done.status == "cancelled"
    [attempt] = tc.list_step_attempts(execution.id)
    assert attempt.status == "cancelled"
    # Cancelling a finished execution changes nothing.
    assert tc.cancel_execution(execution.id) == done


def _wait_until_sleeping(c: mantle.Client, execution_id: str) -> None:
    """Waits until the execution's ``core/sleep`` step is running."""
    deadline = time.monotonic() + 10
    while not any(a.status == "running" for a in c.list_step_attempts(execution_id)):
        assert time.monotonic() < deadline, "the sleep step never started"
        time.sleep(0.05)


def test_cancel_executions_cancels_what_the_filter_matches(tc: mantle.Client) -> None:
    _apply(tc, SLEEPY, "sleepy")
    _apply(tc, SLEEPY, "other")
    ids = [tc.start_execution("sleepy").id for _ in range(3)]
    bystander = tc.start_execution("other").id
    for execution_id in [*ids, bystander]:
        _wait_until_sleeping(tc, execution_id)

    started = time.monotonic()
    assert tc.cancel_executions(workflow="sleepy") == 3
    assert time.monotonic() - started < 5  # it does not wait for them to end
    for execution_id in ids:
        done = tc.wait(execution_id, timeout=10)
        assert done.status == "cancelled", done
        assert [a.status for a in tc.list_step_attempts(execution_id)] == ["cancelled"]
    # The other workflow's execution was not matched.
    assert tc.get_execution(bystander).status == "running"
    # Finished ones are not counted again.
    assert tc.cancel_executions(workflow="sleepy") == 0

    # Status and time filters: the bystander is the only running execution left.
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert tc.cancel_executions(status="running", created_after=future) == 0
    assert tc.cancel_executions(status="running", created_before=future) == 1
    assert tc.wait(bystander, timeout=10).status == "cancelled"


def test_cancel_executions_needs_a_filter(tc: mantle.Client) -> None:
    _apply(tc, SLEEPY, "sleepy")
    execution = tc.start_execution("sleepy")
    _wait_until_sleeping(tc, execution.id)
    with pytest.raises(errors.InvalidArgument) as exc:
        tc.cancel_executions()
    assert "at least one" in exc.value.message
    with pytest.raises(errors.InvalidArgument) as exc:
        tc.cancel_executions(status="completed")
    assert "status" in exc.value.message
    # Nothing was cancelled by the refused requests.
    time.sleep(0.3)
    assert tc.get_execution(execution.id).status == "running"
    tc.cancel_execution(execution.id)
    assert tc.wait(execution.id, timeout=5).status == "cancelled"


def test_delete_execution(tc: mantle.Client) -> None:
    _apply(tc, SLEEPY, "sleepy")
    _apply(tc, HELLO, "hello")
    running = tc.start_execution("sleepy")
    _wait_until_sleeping(tc, running.id)
    with pytest.raises(errors.FailedPrecondition):
        tc.delete_execution(running.id)
    assert tc.get_execution(running.id).status == "running"  # still there

    done = tc.wait(tc.start_execution("hello").id, timeout=WAIT)
    assert done.status == "completed", done.error
    tc.delete_execution(done.id)
    with pytest.raises(errors.NotFound):
        tc.get_execution(done.id)
    with pytest.raises(errors.NotFound):
        tc.list_step_attempts(done.id)
    with pytest.raises(errors.NotFound):
        tc.delete_execution(done.id)
    assert [e.id for e in tc.list_executions()] == [running.id]

    # Once cancelled (finished), the sleeping one can be deleted too.
    tc.cancel_execution(running.id)
    assert tc.wait(running.id, timeout=5).status == "cancelled"
    tc.delete_execution(running.id)
    with pytest.raises(errors.NotFound):
        tc.get_execution(running.id)
    assert tc.list_executions() == []


def test_delete_executions_deletes_finished_ones_only(tc: mantle.Client) -> None:
    _apply(tc, HELLO, "hello")
    _apply(tc, FAILING, "failing")
    _apply(tc, SLEEPY, "sleepy")
    started = datetime.now(timezone.utc)
    hellos = [tc.wait(tc.start_execution("hello").id, timeout=WAIT) for _ in range(2)]
    failed = tc.wait(tc.start_execution("failing").id, timeout=WAIT)
    assert [e.status for e in (*hellos, failed)] == ["completed", "completed", "failed"]
    sleeping = tc.start_execution("sleepy")
    _wait_until_sleeping(tc, sleeping.id)

    # Nothing ended before the test started.
    assert tc.delete_executions(ended_before=started - timedelta(minutes=1)) == 0
    assert len(tc.list_executions()) == 4

    now = datetime.now(timezone.utc)
    assert tc.delete_executions(ended_before=now, workflow="failing") == 1
    with pytest.raises(errors.NotFound):
        tc.get_execution(failed.id)
    assert tc.get_execution(hellos[0].id).status == "completed"

    assert tc.delete_executions(ended_before=datetime.now(timezone.utc)) == 2
    # The unfinished one is never deleted.
    assert [e.id for e in tc.list_executions()] == [sleeping.id]
    assert tc.get_execution(sleeping.id).status == "running"
    assert tc.delete_executions(ended_before=datetime.now(timezone.utc)) == 0

    with pytest.raises(ValueError, match="naive"):
        tc.delete_executions(ended_before=datetime.now())
    tc.cancel_execution(sleeping.id)
    assert tc.wait(sleeping.id, timeout=5).status == "cancelled"


class _FlakyHandler(BaseHTTPRequestHandler):
    """Answers 500 to the first request, 200 with a JSON body after."""

    hits = 0
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        with type(self).lock:
            type(self).hits += 1
            first = type(self).hits == 1
        body = b'{"error": "try again"}' if first else b'{"ok": true}'
        self.send_response(500 if first else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server() -> Iterator[tuple[str, type[_FlakyHandler]]]:
    handler = type("Handler", (_FlakyHandler,), {"hits": 0, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_retry_reruns_only_what_did_not_complete(
    tc: mantle.Client, flaky_server: tuple[str, type[_FlakyHandler]]
) -> None:
    base, handler = flaky_server
    _apply(tc, FLAKY, "flaky", base=base)
    failed = tc.wait(tc.start_execution("flaky").id, timeout=WAIT)
    assert failed.status == "failed", failed
    assert "500" in failed.error
    assert handler.hits == 1
    before = tc.list_step_attempts(failed.id)
    assert ("prepare", 1, "completed") in {(a.step_name, a.attempt, a.status) for a in before}

    retried = tc.retry_execution(failed.id)
    assert retried.id == failed.id
    done = tc.wait(failed.id, timeout=WAIT)
    assert done.status == "completed", done.error
    assert done.outputs == {"status": 200}
    assert handler.hits == 2

    attempts = [(a.step_name, a.attempt, a.status) for a in tc.list_step_attempts(done.id)]
    assert [a for a in attempts if a[0] == "prepare"] == [("prepare", 1, "completed")]
    calls = [a for a in attempts if a[0] == "call"]
    assert calls[0] == ("call", 1, "failed") and calls[-1][2] == "completed"
    assert ("report", len([a for a in attempts if a[0] == "report"]), "completed") in attempts
    # The log holds both runs; a watch may end at the first run's terminal event, so read
    # on with after_seq until the final one.
    events = list(tc.watch(done.id))
    while events[-1].execution_status != "completed":
        more = list(tc.watch(done.id, after_seq=events[-1].seq))
        assert more, [(e.seq, e.kind, e.execution_status) for e in events]
        events += more
    statuses = [e.execution_status for e in events if e.kind == "execution_status"]
    assert statuses.index("failed") < statuses.index("completed")
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert ("call", 2, "completed") in [(e.step_name, e.attempt, e.step_status) for e in events]


# -- refusals and isolation -----------------------------------------------------------------


def test_invalid_inputs_name_the_input(tc: mantle.Client) -> None:
    _apply(tc, HELLO, "hello")
    with pytest.raises(errors.InvalidArgument) as exc:
        tc.start_execution("hello", {"bogus": 1})
    assert "bogus" in exc.value.message
    with pytest.raises(errors.InvalidArgument) as exc:
        tc.start_execution("hello", {"times": "many"})
    assert "times" in exc.value.message
    with pytest.raises(errors.NotFound):
        tc.start_execution("no-such-workflow")
    with pytest.raises(errors.NotFound):
        tc.start_execution("hello", version=9)
    assert tc.list_executions() == []


def test_tenants_cannot_see_each_others_executions(
    daemon: Daemon, op: mantle.Client, tc: mantle.Client, unique: str
) -> None:
    _apply(tc, HELLO, "hello")
    mine = tc.wait(tc.start_execution("hello").id, timeout=WAIT)
    other = f"exec-b-{unique}"
    op.create_tenant(other)
    token = op.create_api_key(other, ["*"], name="exec-test").token
    with daemon.client(token=token) as b:
        with pytest.raises(errors.NotFound):
            b.get_execution(mine.id)
        with pytest.raises(errors.NotFound):
            b.cancel_execution(mine.id)
        with pytest.raises(errors.NotFound):
            b.retry_execution(mine.id)
        with pytest.raises(errors.NotFound):
            b.list_step_attempts(mine.id)
        with pytest.raises(errors.NotFound):
            list(b.watch(mine.id))
        with pytest.raises(errors.NotFound):
            b.start_execution("hello")
        assert b.list_executions() == []
    with pytest.raises(errors.NotFound):
        tc.get_execution("01890000-0000-7000-8000-000000000000")


def test_scopes(daemon: Daemon, op: mantle.Client, tc: mantle.Client, tenant: str) -> None:
    _apply(tc, HELLO, "hello")
    done = tc.wait(tc.start_execution("hello").id, timeout=WAIT)
    reader = op.create_api_key(tenant, ["executions:read"], name="reader").token
    with daemon.client(token=reader) as r:
        assert r.get_execution(done.id).status == "completed"
        assert [e.id for e in r.list_executions()] == [done.id]
        with pytest.raises(errors.PermissionDenied):
            r.start_execution("hello")
        with pytest.raises(errors.PermissionDenied):
            r.cancel_execution(done.id)
    writer = op.create_api_key(tenant, ["executions:write"], name="writer").token
    with daemon.client(token=writer) as w:
        with pytest.raises(errors.PermissionDenied):
            w.get_execution(done.id)


def test_list_filters(tc: mantle.Client) -> None:
    _apply(tc, HELLO, "hello")
    _apply(tc, FAILING, "failing")
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    ids = []
    for workflow in ("hello", "failing", "hello"):
        ids.append(tc.wait(tc.start_execution(workflow).id, timeout=WAIT).id)

    everything = tc.list_executions()
    assert [e.id for e in everything] == list(reversed(ids))  # newest first
    assert [e.id for e in tc.list_executions(page_size=1)] == list(reversed(ids))
    assert [e.id for e in tc.list_executions(workflow="hello")] == [ids[2], ids[0]]
    assert [e.id for e in tc.list_executions(status="failed")] == [ids[1]]
    assert [e.id for e in tc.list_executions(workflow="hello", status="failed")] == []
    assert [e.id for e in tc.list_executions(status="completed")] == [ids[2], ids[0]]
    assert len(tc.list_executions(created_after=before)) == 3
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert tc.list_executions(created_after=future) == []
    assert len(tc.list_executions(created_before=future)) == 3
    assert tc.list_executions(created_before=before) == []
    assert [e.id for e in tc.iter_executions(page_size=2)] == list(reversed(ids))


def test_list_views(tc: mantle.Client) -> None:
    _apply(tc, HELLO, "hello")
    done = tc.wait(tc.start_execution("hello", {"who": "Vi", "times": 3}).id, timeout=WAIT)
    assert done.status == "completed", done.error

    # BASIC, the default: no inputs, outputs or trigger, and none invented.
    [basic] = tc.list_executions()
    assert (basic.id, basic.status, basic.workflow, basic.version) == (done.id, "completed", "hello", 1)
    assert basic.inputs is None and basic.outputs is None and basic.trigger is None
    assert basic.end_time == done.end_time
    assert tc.list_executions(view="basic") == [basic]
    assert list(tc.iter_executions(view="BASIC")) == [basic]

    # FULL: each execution whole, as get_execution returns it.
    [full] = tc.list_executions(view="full")
    assert full == done == tc.get_execution(done.id)
    assert full.inputs == {"who": "Vi", "times": 3}
    assert full.outputs == {"message": "Hello, Vi!", "doubled": 6}
    assert full.trigger is not None and full.trigger.get("type") == "api"
    assert list(tc.iter_executions(view="Full", page_size=1)) == [full]

    with pytest.raises(ValueError, match="^view: "):
        tc.list_executions(view="everything")


def test_list_step_attempts_returns_all_of_many_steps(tc: mantle.Client) -> None:
    # More attempts than the server's default page (50): all come back, with outputs.
    tc.apply(_sets("sixty", 60), "sixty.yaml")
    done = tc.wait(tc.start_execution("sixty").id, timeout=WAIT)
    assert done.status == "completed", done.error

    attempts = tc.list_step_attempts(done.id)
    assert len(attempts) == 60
    assert sorted(a.step_name for a in attempts) == [f"s{i:02d}" for i in range(60)]
    assert all((a.attempt, a.status) == (1, "completed") for a in attempts)
    assert all(a.output == {"n": int(a.step_name[1:])} for a in attempts)
    starts = [a.start_time for a in attempts]
    assert None not in starts and starts == sorted(starts)  # type: ignore[type-var]
    assert tc.list_step_attempts(done.id, view="FULL") == attempts

    basic = tc.list_step_attempts(done.id, view="basic")
    assert [(a.step_name, a.status) for a in basic] == [(a.step_name, a.status) for a in attempts]
    assert all(a.output is None for a in basic)
    with pytest.raises(ValueError, match="^view: "):
        tc.list_step_attempts(done.id, view="outputs")


def test_list_step_attempts_follows_pages_the_server_ends_early(
    daemon: Daemon, tc: mantle.Client, tenant: str
) -> None:
    # Five outputs of ~800 KB: the daemon ends a FULL page at 3 MiB, so they take two
    # pages even at page_size=1000, and list_step_attempts must follow next_page_token.
    blob = "x" * 800_000
    tc.apply(_copies("copies", 5), "copies.yaml")
    done = tc.wait(tc.start_execution("copies", {"blob": blob}).id, timeout=WAIT)
    assert done.status == "completed", done.error

    with grpc.insecure_channel(daemon.address) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        first = stub.ListStepAttempts(
            execution_pb2.ListStepAttemptsRequest(
                id=done.id, page_size=1000, view=common_pb2.VIEW_FULL
            ),
            metadata=_config.call_metadata(daemon.token, tenant),
            timeout=WAIT,
        )
    assert first.next_page_token and 0 < len(first.attempts) < 5

    attempts = tc.list_step_attempts(done.id)
    assert sorted(a.step_name for a in attempts) == [f"c{i}" for i in range(5)]
    assert all(a.status == "completed" and a.output == {"blob": blob} for a in attempts)
    assert [a.step_name for a in attempts[: len(first.attempts)]] == [
        a.step_name for a in first.attempts
    ]
    basic = tc.list_step_attempts(done.id, view="basic")
    assert [a.step_name for a in basic] == [a.step_name for a in attempts]
    assert all(a.output is None for a in basic)


# -- asyncio ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aio_executions(daemon: Daemon, tc: mantle.Client, tenant: str) -> None:
    _apply(tc, HELLO, "hello")
    _apply(tc, SLEEPY, "sleepy")
    async with daemon.aio_client(tenant=tenant) as c:
        started = await c.start_execution("hello", {"who": "Cy"})
        done = await c.wait(started.id, timeout=WAIT)
        assert done.status == "completed" and done.outputs == {"message": "Hello, Cy!", "doubled": 2}
        events = [e async for e in c.watch(started.id)]
        assert events[-1].terminal and events[-1].execution_status == "completed"
        assert [e async for e in c.watch(started.id, after_seq=events[-2].seq)] == [events[-1]]
        assert [a.status for a in await c.list_step_attempts(started.id)] == ["completed"] * 2
        assert (await c.get_execution(started.id)) == done
        [listed] = await c.list_executions(workflow="hello")
        assert listed.id == started.id and listed.inputs is None and listed.outputs is None
        assert await c.list_executions(workflow="hello", view="full") == [done]
        attempts = await c.list_step_attempts(started.id)
        assert {a.step_name: a.output for a in attempts}["greet"] == {"message": "Hello, Cy!"}
        basic = await c.list_step_attempts(started.id, view="basic")
        assert [a.output for a in basic] == [None, None]

        sleeping = await c.start_execution("sleepy")
        with pytest.raises(TimeoutError):
            await c.wait(sleeping.id, timeout=0.5)
        await c.cancel_execution(sleeping.id)
        cancelled = await c.wait(sleeping.id, timeout=5)
        assert cancelled.status == "cancelled"
        with pytest.raises(errors.InvalidArgument):
            await c.start_execution("hello", {"bogus": True})


@pytest.mark.asyncio
async def test_aio_bulk_cancel_and_delete(daemon: Daemon, tc: mantle.Client, tenant: str) -> None:
    _apply(tc, SLEEPY, "sleepy")
    async with daemon.aio_client(tenant=tenant) as c:
        ids = [(await c.start_execution("sleepy")).id for _ in range(2)]
        for execution_id in ids:
            _wait_until_sleeping(tc, execution_id)
        with pytest.raises(errors.FailedPrecondition):
            await c.delete_execution(ids[0])
        with pytest.raises(errors.InvalidArgument):
            await c.cancel_executions()
        assert await c.cancel_executions(workflow="sleepy", status="running") == 2
        for execution_id in ids:
            assert (await c.wait(execution_id, timeout=10)).status == "cancelled"
        await c.delete_execution(ids[0])
        with pytest.raises(errors.NotFound):
            await c.get_execution(ids[0])
        assert await c.delete_executions(ended_before=datetime.now(timezone.utc), workflow="sleepy") == 1
        assert await c.list_executions() == []


def test_sync_wait_times_out(tc: mantle.Client) -> None:
    _apply(tc, SLEEPY, "sleepy")
    execution = tc.start_execution("sleepy")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        tc.wait(execution.id, timeout=0.5)
    assert time.monotonic() - start < 5
    tc.cancel_execution(execution.id)
    assert tc.wait(execution.id, timeout=5).status == "cancelled"


# -- mantlectl --------------------------------------------------------------------------------


def _mantlectl(daemon: Daemon, tenant: str, *args: str) -> subprocess.CompletedProcess[str]:
    binary = mantlectl_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"mantlectl binary not found at {binary}: build it with "
            "`CARGO_TARGET_DIR=$HOME/.cache/mantle-target cargo build -p mantle-client` "
            "or set MANTLECTL_BIN",
            pytrace=False,
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANTLE_")}
    env.update(MANTLE_ADDRESS=daemon.address, MANTLE_TOKEN=daemon.token, MANTLE_TENANT=tenant)
    return subprocess.run(
        [str(binary), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_mantlectl_run_file_wait_and_follow(
    daemon: Daemon, tc: mantle.Client, tenant: str, tmp_path: Path
) -> None:
    hello = tmp_path / "hello.yaml"
    hello.write_text(HELLO.format(name="hello"))
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"who": "file", "times": 1}))

    # Applies the file, converts --input times=4 to an integer, overrides the file's value.
    run = _mantlectl(
        daemon, tenant, "run", str(hello), "--inputs-file", str(inputs),
        "--input", "times=4", "--wait", "-o", "json",
    )
    assert run.returncode == 0, run.stderr
    assert "applied hello version 1" in run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "completed"
    assert result["inputs"] == {"who": "file", "times": 4}
    assert result["outputs"] == {"message": "Hello, file!", "doubled": 8}
    assert tc.get_execution(result["id"]).status == "completed"

    # Without --wait: just the id, then status/logs read it back.
    run = _mantlectl(daemon, tenant, "run", "hello", "--input", "who=Id")
    assert run.returncode == 0, run.stderr
    execution_id = run.stdout.strip()
    assert tc.wait(execution_id, timeout=WAIT).outputs == {"message": "Hello, Id!", "doubled": 2}
    status = _mantlectl(daemon, tenant, "status", execution_id)
    assert status.returncode == 0, status.stderr
    assert "completed" in status.stdout and "greet" in status.stdout
    logs = _mantlectl(daemon, tenant, "logs", execution_id)
    assert logs.returncode == 0, logs.stderr
    assert "[greet] Hello, Id!" in logs.stdout
    assert logs.stdout.rstrip().endswith("execution completed")

    # --follow on a failing workflow: progress on stderr, exit 1.
    failing = tmp_path / "failing.yaml"
    failing.write_text(FAILING.format(name="failing"))
    run = _mantlectl(daemon, tenant, "run", str(failing), "--follow")
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "step boom attempt 1 failed: " in run.stderr and "broken on purpose" in run.stderr
    assert "status:    failed" in run.stdout

    # A value that does not fit the declared type is refused before anything starts.
    run = _mantlectl(daemon, tenant, "run", "hello", "--input", "times=many")
    assert run.returncode == 1
    assert '--input times: "many" is not an integer' in run.stderr
    listed = _mantlectl(daemon, tenant, "executions", "list", "--status", "failed", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [e["workflow"] for e in json.loads(listed.stdout)] == ["failing"]
