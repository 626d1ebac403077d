"""Control messages as a receiver judges them: signatures under rotation, time skew,
and garbage counted by reason."""

from __future__ import annotations

import json

import pytest

from warden.control import ControlCodec, Rejected, encode

NEW, OLD = "new-secret-0123456789", "old-secret-0123456789"


def rejected(codec: ControlCodec, payload, now: float = 1000.0) -> str:
    with pytest.raises(Rejected) as caught:
        codec.decode("warden:heartbeat", payload, now=now)
    return str(caught.value)


def test_every_secret_in_force_verifies_and_the_first_signs():
    rolling, old_only = ControlCodec([NEW, OLD], 30), ControlCodec([OLD], 30)
    from_old = encode("heartbeat", "i-a", "z", 7, old_only.secret, now=1000.0)
    from_rolling = encode("heartbeat", "i-b", "z", 8, rolling.secret, now=1000.0)
    assert rolling.decode("warden:heartbeat", from_old, now=1000.0).epoch == 7
    assert rejected(old_only, from_rolling) == "bad_signature", "the new secret signs at once"
    moved = ControlCodec([OLD, NEW], 30)
    assert old_only.decode("warden:heartbeat", encode("heartbeat", "i-c", "z", 9, moved.secret, now=1000.0),
                           now=1000.0).instance_id == "i-c"


def test_garbage_is_counted_by_reason_and_never_raises_anything_else():
    codec = ControlCodec([NEW], 30)
    good = json.loads(encode("heartbeat", "i-a", "z", 1, NEW, now=1000.0))
    cases = {
        b"\xff\xfe": "not_utf8", "x" * 100000: "too_large", "{": "not_json", "[1]": "not_object",
        json.dumps({k: v for k, v in good.items() if k != "sig"}): "unsigned",
        json.dumps(dict(good, sig="0" * 64)): "bad_signature",
        json.dumps(dict(good, sig="zz")): "bad_signature",
        json.dumps(dict(good, epoch=2)): "bad_signature",
    }
    for payload, reason in cases.items():
        assert rejected(codec, payload) == reason, payload[:40]
    assert rejected(codec, encode("heartbeat", "i-a", "z", 1, NEW, now=900.0)) == "stale_ts"
    assert codec.rejected["bad_signature"] == 3 and codec.accepted == 0
    assert codec.decode("warden:heartbeat", json.dumps(good), now=1000.0).epoch == 1
    assert codec.accepted == 1
