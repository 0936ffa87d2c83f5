"""Secrets without a daemon: request construction, local checks that never show values,
conversion of the protobuf messages."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import mantle
from mantle import _common
from mantle.v1 import secret_pb2


def test_requests_carry_the_fields() -> None:
    req = _common.create_secret_request("api", "bearer", {"token": "t-123456"})
    assert (req.name, req.type, dict(req.fields)) == ("api", "bearer", {"token": "t-123456"})
    req2 = _common.update_secret_request("api", {"token": "t-2"})
    assert (req2.name, dict(req2.fields)) == ("api", {"token": "t-2"})
    assert _common.rotate_request(0).batch_size == 0
    assert _common.rotate_request(50).batch_size == 50


def test_bad_fields_are_named_without_their_values() -> None:
    with pytest.raises(TypeError) as e:
        _common.secret_fields({"password": b"s3cr3t-bytes"})  # type: ignore[dict-item]
    assert str(e.value) == "fields.password: expected a str value, got bytes"
    assert "s3cr3t" not in repr(e.value)
    with pytest.raises(TypeError) as e:
        _common.secret_fields("token=s3cr3t")  # type: ignore[arg-type]
    assert "s3cr3t" not in str(e.value)
    with pytest.raises(TypeError):
        _common.secret_fields({1: "x"})  # type: ignore[dict-item]
    for bad in (-1, True, 1.5, 2**31):
        with pytest.raises(ValueError):
            _common.rotate_request(bad)  # type: ignore[arg-type]


def test_secret_from_proto() -> None:
    msg = secret_pb2.Secret(name="db", type="postgres", field_names=["url"], key_id="0a1b")
    msg.create_time.FromDatetime(datetime(2024, 1, 2, tzinfo=timezone.utc))
    secret = mantle.Secret.from_proto(msg)
    assert secret == mantle.Secret(
        name="db",
        type="postgres",
        field_names=("url",),
        key_id="0a1b",
        create_time=datetime(2024, 1, 2, tzinfo=timezone.utc),
        update_time=None,
    )
    rotation = mantle.Rotation.from_proto(
        secret_pb2.RotateEncryptionKeyResponse(key_id="k2", rotated=3, remaining=1)
    )
    assert rotation == mantle.Rotation(key_id="k2", rotated=3, remaining=1)
