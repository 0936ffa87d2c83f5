"""Latency against the real daemon: TCP_NODELAY on both ends of the connection.

Without TCP_NODELAY, Nagle's algorithm holds back the last, partial segment of an answer
larger than one TCP segment until the peer acknowledges the previous one, and the peer
delays that acknowledgement by up to 40 ms: every such call then takes over 40 ms instead
of a few. The daemon sets TCP_NODELAY on the connections it accepts; grpc-core sets it on
the clients' sockets (there is no channel option for it), which is checked here directly.
"""

from __future__ import annotations

import itertools
import os
import socket
import stat
import sys
import time
from collections.abc import Callable

import grpc
import pytest

import mantle
import mantle.aio
from mantle import _config
from mantle.v1 import common_pb2, execution_pb2, execution_pb2_grpc

from .conftest import Daemon

pytestmark = pytest.mark.daemon

BLOB = """\
name: blob
inputs:
  blob: {type: string}
steps:
  - name: s
    action: core/set
    params:
      n: 1
"""

COUNT = 50
CALLS = 10
LIMIT_MS = 20.0
"""The fastest of CALLS listings must take less: far under the 40 ms of a delayed ACK."""
SEGMENT = 65_483
"""The largest TCP segment on Linux's loopback (MTU 65536): a FULL page must be larger."""


def _fastest_ms(call: Callable[[], object]) -> float:
    call()  # warm up: the connection, the daemon's caches
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def test_listing_50_executions_takes_milliseconds(
    daemon: Daemon, op: mantle.Client, unique: str
) -> None:
    tenant = f"latency-{unique}"
    op.create_tenant(tenant)
    with daemon.client(tenant=tenant) as c:
        c.apply(BLOB, "blob.yaml")
        # ~1.5 KB of inputs each: a FULL page of 50 spans two loopback segments.
        blob = "x" * 1500
        ids = [c.start_execution("blob", {"blob": f"{i:04d}{blob}"}).id for i in range(COUNT)]
        for id in ids:
            assert c.wait(id, timeout=30).status == "completed"

        # The premise: one FULL page is one answer larger than a segment.
        with grpc.insecure_channel(daemon.address) as channel:
            page = execution_pb2_grpc.ExecutionServiceStub(channel).ListExecutions(
                execution_pb2.ListExecutionsRequest(page_size=COUNT, view=common_pb2.VIEW_FULL),
                metadata=_config.call_metadata(daemon.token, tenant),
                timeout=30,
            )
        assert len(page.executions) == COUNT and page.ByteSize() > SEGMENT

        for view in ("basic", "full"):

            def list_50(view: str = view) -> None:
                # iter_executions stops after 50: one ListExecutions call, one page.
                executions = c.iter_executions(page_size=COUNT, view=view)
                listed = list(itertools.islice(executions, COUNT))
                assert len(listed) == COUNT

            fastest = _fastest_ms(list_50)
            assert fastest < LIMIT_MS, f"listing {COUNT} executions ({view}) took {fastest:.1f} ms"


def _nodelay_of_sockets_to(address: str) -> list[int]:
    """TCP_NODELAY of each of this process's TCP sockets connected to ``address``
    (``127.0.0.1:<port>``), found through /proc/self/fd."""
    host, port = address.rsplit(":", 1)
    peers = {(host, int(port)), (f"::ffff:{host}", int(port))}
    values = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # closed meanwhile (the listing's own fd), or not a socket we can read
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if sock.type != socket.SOCK_STREAM:
                continue
            try:
                peer = sock.getpeername()
            except OSError:
                continue  # not connected: a listener
            if (peer[0], peer[1]) in peers:
                values.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    return values


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the sockets through /proc/self/fd"
)


@linux_only
def test_sync_client_sockets_set_tcp_nodelay(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.health() == "SERVING"
        values = _nodelay_of_sockets_to(daemon.address)
        assert values and all(values), values


@linux_only
@pytest.mark.asyncio
async def test_aio_client_sockets_set_tcp_nodelay(daemon: Daemon) -> None:
    async with daemon.aio_client() as c:
        assert await c.health() == "SERVING"
        values = _nodelay_of_sockets_to(daemon.address)
        assert values and all(values), values
