"""The event model: round-trip, strict decoding with precise reasons, ids and subject names."""

import ipaddress
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from audit_events import (
    MAX_EVENT_BYTES,
    InvalidEvent,
    StreamNames,
    canonical_ip,
    decode,
    encode,
    uuid7,
)
from audit_events.model import canonical, event_values
from tests.helpers import make_event


def test_round_trip_is_lossless_and_canonical() -> None:
    event = make_event(metadata={"z": 1, "a": {"y": [1.5, None], "b": True}})
    data = encode(event)
    assert decode(data) == event
    assert b" " not in data.replace(b"curl/8", b"")  # compact separators
    body = json.loads(data)
    assert body["schema_version"] == 2
    assert body["request_id"] is None  # every key, always
    assert list(body) == sorted(body)
    assert list(body["metadata"]) == ["a", "z"]
    assert list(body["metadata"]["a"]) == ["b", "y"]  # sorted at every level
    assert encode(decode(data)) == data


def test_one_instant_has_one_canonical_form() -> None:
    """The API's clock, a client's offset and PostgreSQL's session time zone all give the same
    bytes: signatures and seals must not depend on where the time was read."""
    utc = make_event(occurred_at=datetime(2026, 11, 28, 10, 0, 0, 5, tzinfo=UTC))
    paris = make_event(
        id=utc.id,
        occurred_at=datetime(2026, 11, 28, 11, 0, 0, 5, tzinfo=timezone(timedelta(hours=1))),
    )
    assert encode(paris) == encode(utc)
    assert b'"occurred_at":"2026-11-28T10:00:00.000005Z"' in encode(utc)
    stored = ipaddress.ip_address("::ffff:10.0.0.7")  # as psycopg returns an inet
    ipv6 = make_event(id=utc.id, occurred_at=utc.occurred_at, source_ip="::ffff:10.0.0.7")
    values = event_values(ipv6)
    row_values = (*values[:8], canonical_ip(str(stored)), *values[9:])
    assert canonical(row_values) == encode(ipv6)


@pytest.mark.parametrize("number", [1e16, -2.5e20, -0.0, 2**64, -(2**63) - 1])
def test_metadata_numbers_postgresql_would_change_are_refused(number: float) -> None:
    """jsonb keeps decimals: 1e16 would come back as an integer, -0.0 as 0.0, and the stored
    row could then never reproduce the signed bytes."""
    data = encode(make_event()).replace(
        b'"method":"PATCH"', b'"method":%s' % json.dumps(number).encode()
    )
    with pytest.raises(InvalidEvent, match="metadata"):
        decode(data)
    with pytest.raises(ValueError, match="metadata"):  # nor can the API build such an event
        make_event(metadata={"n": number})


def test_schema_version_1_events_still_decode() -> None:
    """What producers of the previous release publish while they are being rolled."""
    body = json.loads(encode(make_event()))
    body["schema_version"] = 1
    del body["request_id"]
    assert decode(json.dumps(body).encode()).schema_version == 1


def test_ipv6_and_no_ip_round_trip() -> None:
    for ip in ("2001:db8::1", None):
        event = make_event(source_ip=ip)
        assert decode(encode(event)).source_ip == event.source_ip


def test_ip_addresses_are_stored_in_canonical_form() -> None:
    assert canonical_ip("192.0.2.1") == "192.0.2.1"
    assert canonical_ip("2001:DB8:0::0:1") == "2001:db8::1"
    assert canonical_ip("::ffff:c000:201") == "::ffff:192.0.2.1"  # IPv4-mapped
    for bad in (
        "192.0.2",
        "192.0.2.01",
        "256.0.0.1",
        " 192.0.2.1",
        "fe80::1%eth0",
        "1\x00",
        "::g",
        "localhost",
        "",
    ):
        with pytest.raises(ValueError, match="not an IPv"):
            canonical_ip(bad)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: b"{not json", "not JSON"),
        (lambda d: json.dumps({**d, "schema_version": 3}).encode(), "schema_version"),
        (
            lambda d: json.dumps({k: v for k, v in d.items() if k != "actor_id"}).encode(),
            "actor_id",
        ),
        (lambda d: json.dumps({**d, "outcome": "maybe"}).encode(), "outcome"),
        (lambda d: json.dumps({**d, "id": "not-a-uuid"}).encode(), "id"),
        (lambda d: json.dumps({**d, "occurred_at": "2026-11-25T12:00:00"}).encode(), "occurred_at"),
        (lambda d: json.dumps({**d, "source_ip": "999.1.1.1"}).encode(), "source_ip"),
        (lambda d: json.dumps({**d, "action": "Account Update"}).encode(), "action"),
        (lambda d: json.dumps({**d, "trace_id": "xyz"}).encode(), "trace_id"),
        (lambda d: json.dumps({**d, "surprise": 1}).encode(), "surprise"),
        (lambda d: json.dumps([d]).encode(), "event"),
    ],
)
def test_decode_rejects_with_precise_reason(mutate, reason: str) -> None:
    valid = json.loads(encode(make_event()))
    with pytest.raises(InvalidEvent) as caught:
        decode(mutate(valid))
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_decode_rejects_oversize_before_parsing() -> None:
    with pytest.raises(InvalidEvent, match="more than"):
        decode(b" " * (MAX_EVENT_BYTES + 1))


def test_uuid7_layout_and_time_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for value in ids:
        assert value.version == 7
        assert value.variant == "specified in RFC 4122"
        assert before <= value.int >> 80 <= after
    ms = [u.int >> 80 for u in ids]
    assert ms == sorted(ms)
    assert isinstance(ids[0], UUID)


def test_subject_names_follow_the_prefix() -> None:
    names = StreamNames(subject_prefix="acme.audit")
    assert names.event_subject("account.update") == "acme.audit.events.account.update"
    assert names.events_subjects == "acme.audit.events.>"
    assert names.dlq_subject("invalid") == "acme.audit.dlq.invalid"
    assert StreamNames().stream == "AUDIT"
    assert StreamNames().durable == "audit-writer"


def test_names_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_STREAM", "AUDIT2")
    monkeypatch.setenv("AUDIT_DURABLE", "writer2")
    names = StreamNames()
    assert (names.stream, names.durable) == ("AUDIT2", "writer2")
    monkeypatch.setenv("AUDIT_STREAM", "bad name")
    with pytest.raises(ValueError, match="stream"):
        StreamNames()
