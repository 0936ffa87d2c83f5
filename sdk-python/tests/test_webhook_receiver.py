"""The documented webhook receiver (examples/webhook_receiver.py): it accepts a delivery
signed the way Mantle signs (see daemon/src/webhooks/mod.rs and its Rust test) and rejects
tampered, wrongly keyed, old (replayed) and repeated deliveries, and listens on 127.0.0.1
unless told otherwise (--host)."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import pathlib
import threading
import time
import urllib.error
import urllib.request

import pytest

RECEIVER = pathlib.Path(__file__).resolve().parents[2] / "examples" / "webhook_receiver.py"
spec = importlib.util.spec_from_file_location("webhook_receiver", RECEIVER)
assert spec and spec.loader
receiver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(receiver)

KEY = b"whsec-0123456789"
BODY = b'{"delivery_id":"d1","execution_id":"e1","status":"completed","workflow":"w"}'


def sign(key: bytes, t: int, body: bytes) -> str:
    return f"t={t},v1=" + hmac.new(key, f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def test_accepts_a_fresh_signed_delivery() -> None:
    event = receiver.verify(KEY, sign(KEY, 1_700_000_000, BODY), BODY, now=1_700_000_010)
    assert event["status"] == "completed"


@pytest.mark.parametrize(
    "header, body, now",
    [
        (sign(KEY, 1_700_000_000, BODY), BODY.replace(b"completed", b"failed"), 1_700_000_010),
        (sign(b"other-key", 1_700_000_000, BODY), BODY, 1_700_000_010),
        (sign(KEY, 1_700_000_000, BODY), BODY, 1_700_000_000 + 301),  # replayed later
        ("t=1700000000", BODY, 1_700_000_010),
    ],
    ids=["tampered", "wrong-key", "old-timestamp", "malformed"],
)
def test_rejects(header: str, body: bytes, now: int) -> None:
    with pytest.raises(receiver.Rejected):
        receiver.verify(KEY, header, body, now=now)


def test_rejects_a_repeated_delivery_id() -> None:
    seen: set[str] = set()
    header = sign(KEY, 1_700_000_000, BODY)
    receiver.verify(KEY, header, BODY, now=1_700_000_001, seen=seen, delivery_id="d1")
    with pytest.raises(receiver.Rejected, match="already processed"):
        receiver.verify(KEY, header, BODY, now=1_700_000_002, seen=seen, delivery_id="d1")


def test_matches_the_daemons_signature_format() -> None:
    # The Rust test signs b"key" over "1700000000.{}"; the same here must verify.
    header = sign(b"key", 1_700_000_000, b"{}")
    assert receiver.verify(b"key", header, b"{}", now=1_700_000_000) == {}


def test_listens_on_localhost_by_default() -> None:
    args = receiver.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    args = receiver.parse_args(["9000", "--host", "0.0.0.0"])
    assert (args.host, args.port) == ("0.0.0.0", 9000)
    assert receiver.parse_args(["--host", "::1", "7000"]).port == 7000
    with pytest.raises(SystemExit):
        receiver.parse_args(["70000"])


def test_serves_deliveries_on_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receiver.Handler, "key", KEY)
    monkeypatch.setattr(receiver.Handler, "seen", set())
    server = receiver.make_server(receiver.parse_args(["0"]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"

        def post(body: bytes, signature: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/",
                data=body,
                headers={"X-Mantle-Signature": signature, "X-Mantle-Delivery": "d1"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as e:
                return e.code

        now = int(time.time())
        assert post(BODY, sign(b"other-key", now, BODY)) == 400
        assert post(BODY, sign(KEY, now, BODY)) == 204
        assert post(BODY, sign(KEY, now, BODY)) == 400  # the same delivery again
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_listens_on_an_ipv6_host() -> None:
    try:
        server = receiver.make_server(receiver.parse_args(["0", "--host", "::1"]))
    except OSError as e:  # no IPv6 loopback here
        pytest.skip(f"cannot listen on [::1]: {e}")
    with server:
        assert server.server_address[0] == "::1"
