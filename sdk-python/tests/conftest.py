"""Shared fixtures. The ``daemon`` fixture runs the real ``mantle`` binary once per session.

Binary: env ``MANTLE_BIN``, default ``$CARGO_TARGET_DIR/debug/mantle`` with
``CARGO_TARGET_DIR`` defaulting to ``~/.cache/mantle-target``. Build it with
``cargo build -p mantle-daemon``. A missing binary fails the daemon tests (it does not
skip them); the unit tests do not need it (``pytest -m 'not daemon'``). The ``mantlectl``
tests use ``MANTLECTL_BIN``, default ``$CARGO_TARGET_DIR/debug/mantlectl``
(``cargo build -p mantle-client``).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import mantle

STARTUP_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 15.0
LISTEN_RE = re.compile(r"^mantle listening on (\S+)$")


def _target_binary(env: str, name: str) -> Path:
    explicit = os.environ.get(env)
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache" / "mantle-target")
    return Path(target) / "debug" / name


def daemon_binary() -> Path:
    return _target_binary("MANTLE_BIN", "mantle")


def mantlectl_binary() -> Path:
    return _target_binary("MANTLECTL_BIN", "mantlectl")


@dataclass
class Daemon:
    """A running ``mantle serve``."""

    address: str
    """``127.0.0.1:<port>`` as printed by the daemon."""
    data_dir: Path
    token: str = field(repr=False)
    """The operator token from ``<data dir>/operator-token``."""
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def client(self, token: str | None = None, **kwargs: Any) -> mantle.Client:
        """A sync client; the operator token unless ``token`` is given."""
        return mantle.Client(self.address, self.token if token is None else token, **kwargs)

    def aio_client(self, token: str | None = None, **kwargs: Any) -> mantle.aio.Client:
        import mantle.aio

        return mantle.aio.Client(self.address, self.token if token is None else token, **kwargs)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


def _read_lines(stream: Any, lines: queue.Queue[str | None]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip("\r\n"))
    lines.put(None)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    binary = daemon_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"mantle binary not found at {binary}: build it with "
            "`CARGO_TARGET_DIR=$HOME/.cache/mantle-target cargo build -p mantle-daemon` "
            "or set MANTLE_BIN",
            pytrace=False,
        )
    tmp = Path(tempfile.mkdtemp(prefix="mantle-sdk-test-"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    stderr_path = tmp / "daemon.stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANTLE_")}
    env.update(
        MANTLE_DATA_DIR=str(data_dir),
        MANTLE_API_ADDRESS="127.0.0.1:0",
        MANTLE_LOG_LEVEL="info",
        MANTLE_SHUTDOWN_GRACE_PERIOD="10s",
        # The execution tests call a local HTTP server from http/request steps.
        MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS="true",
    )
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [str(binary), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()

    def release_stdout() -> None:
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def fail(msg: str) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        release_stdout()
        pytest.fail(
            f"{msg}\n--- daemon stderr ---\n{stderr_path.read_text(errors='replace')}",
            pytrace=False,
        )

    address = None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while address is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            fail(f"daemon did not print 'mantle listening on' within {STARTUP_TIMEOUT}s")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            fail(f"daemon exited (code {proc.wait()}) before listening")
            return
        m = LISTEN_RE.match(line)
        if m:
            address = m.group(1)

    token_file = data_dir / "operator-token"
    if not token_file.is_file():
        fail(f"{token_file} does not exist after startup")
    token = token_file.read_text().strip()
    if not token:
        fail(f"{token_file} is empty")

    d = Daemon(address=address, data_dir=data_dir, token=token, process=proc, stderr_path=stderr_path)
    yield d

    # Teardown: graceful shutdown must exit 0 within 15 s.
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        release_stdout()
        pytest.fail(
            f"daemon did not exit within {SHUTDOWN_TIMEOUT}s of SIGTERM\n{d.stderr()}",
            pytrace=False,
        )
    release_stdout()
    stderr = d.stderr()
    shutil.rmtree(tmp, ignore_errors=True)
    assert code == 0, f"daemon exited with {code} after SIGTERM\n--- stderr ---\n{stderr}"


@pytest.fixture
def unique() -> str:
    """A short random suffix for tenant names (the daemon is shared by all tests)."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def op(daemon: Daemon) -> Iterator[mantle.Client]:
    """A sync client with the operator token."""
    with daemon.client() as c:
        yield c


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MANTLE_TOKEN, and MANTLE_DATA_DIR pointing at an empty directory, so token
    discovery finds nothing unless a test sets it up. Returns that directory."""
    monkeypatch.delenv("MANTLE_TOKEN", raising=False)
    empty = tmp_path / "empty-data-dir"
    empty.mkdir()
    monkeypatch.setenv("MANTLE_DATA_DIR", str(empty))
    return empty
