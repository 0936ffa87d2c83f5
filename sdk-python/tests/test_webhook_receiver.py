"""The documented webhook receiver (examples/webhook_receiver.py): it accepts a delivery
signed the way Mantle signs (see daemon/src/webhooks/mod.rs and its Rust test) and rejects
tampered, wrongly keyed, old (replayed) and repeated deliveries."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import pathlib

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
