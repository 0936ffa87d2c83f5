"""Shared fixtures. The ``daemon`` fixture runs the real ``mantle`` binary once per session;
``restartable_daemon`` gives one test a daemon of its own, which it may stop (SIGTERM or
SIGKILL) and start again on the same data dir and port.

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
from typing import Any, NoReturn

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
    """The operator token: the first line of ``<data dir>/operator-token``."""
    process: subprocess.Popen[bytes]
    stderr_path: Path
    reader: threading.Thread | None = field(default=None, repr=False)
    """The thread reading the daemon's stdout."""

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

    def release_stdout(self) -> None:
        """After the process exited: lets the reader thread finish, closes the pipe."""
        if self.reader is not None:
            self.reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _read_lines(stream: Any, lines: queue.Queue[str | None]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip("\r\n"))
    lines.put(None)


def start_daemon(data_dir: Path, stderr_path: Path, address: str = "127.0.0.1:0") -> Daemon:
    """Starts ``mantle serve`` on ``address`` with ``data_dir`` and returns it once it
    prints where it listens (its stderr is appended to ``stderr_path``). Fails the test if
    the binary is missing or the daemon does not come up."""
    binary = daemon_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"mantle binary not found at {binary}: build it with "
            "`CARGO_TARGET_DIR=$HOME/.cache/mantle-target cargo build -p mantle-daemon` "
            "or set MANTLE_BIN",
            pytrace=False,
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANTLE_")}
    env.update(
        MANTLE_DATA_DIR=str(data_dir),
        MANTLE_API_ADDRESS=address,
        MANTLE_LOG_LEVEL="info",
        MANTLE_SHUTDOWN_GRACE_PERIOD="10s",
        # The execution tests call a local HTTP server from http/request steps.
        MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS="true",
    )
    with open(stderr_path, "ab") as err:
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

    def fail(msg: str) -> NoReturn:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        pytest.fail(
            f"{msg}\n--- daemon stderr ---\n{stderr_path.read_text(errors='replace')}",
            pytrace=False,
        )

    listening = None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while listening is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            fail(f"daemon did not print 'mantle listening on' within {STARTUP_TIMEOUT}s")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            fail(f"daemon exited (code {proc.wait()}) before listening")
        m = LISTEN_RE.match(line)
        if m:
            listening = m.group(1)

    token_file = data_dir / "operator-token"
    if not token_file.is_file():
        fail(f"{token_file} does not exist after startup")
    # The token is the first line; the daemon's address follows (``address=<ip:port>``).
    file_lines = token_file.read_text().splitlines()
    token = file_lines[0].strip() if file_lines else ""
    if not token:
        fail(f"{token_file} has no token on its first line")
    recorded = [ln.strip() for ln in file_lines[1:] if ln.strip().startswith("address=")]
    if recorded != [f"address={listening}"]:
        fail(f"{token_file} does not record address={listening}: {recorded}")
    return Daemon(
        address=listening,
        data_dir=data_dir,
        token=token,
        process=proc,
        stderr_path=stderr_path,
        reader=reader,
    )


def stop_daemon(d: Daemon, sig: signal.Signals = signal.SIGTERM) -> int:
    """Sends ``sig`` and returns the exit code once the process has exited (fails the
    test if it is still running after SHUTDOWN_TIMEOUT)."""
    if d.process.poll() is None:
        d.process.send_signal(sig)
    try:
        code = d.process.wait(timeout=SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        d.process.kill()
        d.process.wait()
        d.release_stdout()
        pytest.fail(
            f"daemon did not exit within {SHUTDOWN_TIMEOUT}s of {sig.name}\n{d.stderr()}",
            pytrace=False,
        )
    d.release_stdout()
    return code


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    tmp = Path(tempfile.mkdtemp(prefix="mantle-sdk-test-"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    d = start_daemon(data_dir, tmp / "daemon.stderr")
    yield d

    # Teardown: graceful shutdown must exit 0 within 15 s.
    code = stop_daemon(d)
    stderr = d.stderr()
    shutil.rmtree(tmp, ignore_errors=True)
    assert code == 0, f"daemon exited with {code} after SIGTERM\n--- stderr ---\n{stderr}"


class RestartableDaemon:
    """A daemon of one test's own, which it may stop and start again on the same data dir
    and the same port (a deploy)."""

    def __init__(self, tmp: Path) -> None:
        self.data_dir = tmp / "data"
        self.data_dir.mkdir()
        self.stderr_path = tmp / "daemon.stderr"
        self.current: Daemon | None = start_daemon(self.data_dir, self.stderr_path)
        self.address = self.current.address
        self.token = self.current.token
        self.exit_codes: list[int] = []
        """The exit code of every stop so far."""

    def client(self, **kwargs: Any) -> mantle.Client:
        return mantle.Client(self.address, self.token, **kwargs)

    def aio_client(self, **kwargs: Any) -> mantle.aio.Client:
        import mantle.aio

        return mantle.aio.Client(self.address, self.token, **kwargs)

    def stop(self, sig: signal.Signals) -> int:
        """Stops the running daemon with ``sig`` and returns its exit code."""
        assert self.current is not None, "the daemon is not running"
        code = stop_daemon(self.current, sig)
        self.current = None
        self.exit_codes.append(code)
        return code

    def start(self) -> None:
        """Starts the daemon again on the same address and data dir."""
        assert self.current is None, "the daemon is running"
        self.current = start_daemon(self.data_dir, self.stderr_path, self.address)
        assert self.current.address == self.address
        assert self.current.token == self.token

    def restart(self, sig: signal.Signals, downtime: float) -> int:
        """Stops the daemon with ``sig``, keeps it down for ``downtime`` seconds, starts
        it again; returns the old process's exit code."""
        code = self.stop(sig)
        time.sleep(downtime)
        self.start()
        return code

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def restartable_daemon(tmp_path: Path) -> Iterator[RestartableDaemon]:
    """A daemon of the test's own (not the shared one), restartable on the same port."""
    d = RestartableDaemon(tmp_path)
    yield d
    if d.current is not None:
        code = stop_daemon(d.current)
        assert code == 0, f"daemon exited with {code} after SIGTERM\n{d.stderr()}"


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
