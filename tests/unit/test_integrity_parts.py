"""Authorship and seals without servers: the HMAC is the standard one, keys rotate, the
consumer's checks decide what becomes a row, seals bind every field, keygen tops up old files."""

import base64
import hashlib
import hmac
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_consumer.batch import Checks, decode_batch
from audit_events import encode, keygen
from audit_events.authorship import SIGNATURE_HEADER, EventKeys, bound, key_id
from audit_events.seals import GENESIS, Seal, SealKey, SealKeys
from tests.env import EVENT_KEY
from tests.fakes import Log, message
from tests.helpers import make_event

OLD, NEW = "old-key-" + "o" * 32, "new-key-" + "n" * 32


def test_the_signature_is_standard_hmac_sha256_with_the_key_id() -> None:
    data = encode(make_event())
    for key in (OLD, "k" * 100):  # also longer than SHA-256's block: hashed first, per RFC 2104
        kid, _, tag = EventKeys([key]).sign(data).partition(":")
        assert base64.b64decode(tag) == hmac.digest(key.encode(), data, "sha256")
        assert len(kid) == 8


def test_keys_rotate_the_first_signs_every_one_checks() -> None:
    data = encode(make_event())
    old_signature = EventKeys([OLD]).sign(data)
    rotating = EventKeys([NEW, OLD])
    assert rotating.check(data, old_signature) is None  # still accepted while rolling
    assert rotating.sign(data).split(":")[0] == EventKeys([NEW]).signing_id
    assert EventKeys([NEW]).check(data, old_signature) == f"unknown key {old_signature[:8]!r}"
    assert rotating.check(data + b" ", old_signature) == "signature does not match"
    assert rotating.check(data, None) == "unsigned"
    with pytest.raises(ValueError, match="32"):
        EventKeys(["short"])
    with pytest.raises(ValueError, match="AUDIT_EVENT_KEYS"):
        EventKeys.parse("")


def batch_of(*msgs_data: tuple[bytes, str | None], until: datetime | None = None):
    log = Log()
    msgs = []
    for seq, (data, signature) in enumerate(msgs_data, start=1):
        msg = message(log, seq, data, signed=False)
        msg.headers = {SIGNATURE_HEADER: signature} if signature else None
        msgs.append(msg)
    return decode_batch(msgs, Checks(EventKeys([EVENT_KEY]), until), None)


def test_only_authentic_canonical_events_become_rows() -> None:
    keys = EventKeys([EVENT_KEY])
    good = encode(make_event())
    reordered = json.dumps(json.loads(good)).encode()  # same event, not our encoder's bytes
    batch = batch_of(
        (good, keys.sign(good)),
        (good, None),
        (good, EventKeys([OLD]).sign(good)),
        (good.replace(b"alice", b"mallo"), keys.sign(good)),
        (reordered, keys.sign(reordered)),
    )
    assert len(batch.rows) == 1
    assert [(kind, reason) for _, kind, reason in batch.dead] == [
        ("signature", "bad signature: unsigned"),
        ("signature", f"bad signature: unknown key {EventKeys([OLD]).signing_id!r}"),
        ("signature", "bad signature: signature does not match"),
        ("invalid", "not the event's canonical form (model.encode)"),
    ]
    *_, signature, digest, _ = batch.rows[0]
    assert digest == hashlib.sha256(good).digest()  # what the sealer will seal
    assert signature == keys.sign(good)  # the row keeps its signature


def test_an_event_must_arrive_on_its_actions_subject() -> None:
    """The broker lets audit-query publish only audit.events.audit.>: with this check, its key
    cannot put an account event on the record either."""
    keys = EventKeys([EVENT_KEY])
    forged = encode(make_event(action="account.delete"))
    batch = batch_of((forged, keys.sign(forged)))
    assert [(kind, reason) for _, kind, reason in batch.dead] == [
        ("invalid", "action account.delete must arrive on audit.events.account.delete")
    ]


def v1(event_bytes: bytes) -> bytes:
    body = json.loads(event_bytes)
    body["schema_version"] = 1
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_unsigned_schema_1_events_are_accepted_only_until_the_deadline() -> None:
    """What producers of the previous release send while they are rolled (README, Upgrading)."""
    event = make_event()
    later = datetime.now(UTC) + timedelta(hours=1)
    accepted = batch_of((v1(encode(event)), None), until=later)
    assert accepted.dead == []
    *_, signature, digest, _ = accepted.rows[0]
    assert digest == hashlib.sha256(encode(event)).digest()  # of its canonical (v2) form
    assert signature is None  # sealed with the UNSIGNED flag
    expired = batch_of((v1(encode(event)), None), until=datetime.now(UTC) - timedelta(seconds=1))
    assert [reason for _, _, reason in expired.dead] == ["bad signature: unsigned"]
    current = batch_of((encode(event), None), until=later)  # a v2 event must be signed
    assert [reason for _, _, reason in current.dead] == ["bad signature: unsigned"]


def seal(key: SealKey) -> Seal:
    return key.sign(
        Seal(7, 100, 200, 3, hashlib.sha256(b"e").digest(), GENESIS, datetime.now(UTC), "")
    )


def test_a_seal_binds_every_field_and_only_its_public_key_checks_it() -> None:
    key = SealKey(keygen.generate(("AUDIT_SEAL_KEY",))["AUDIT_SEAL_KEY"])
    keys = SealKeys.parse(key.public_text())
    signed = seal(key)
    assert keys.check(signed) is None
    assert signed.head == f"7:{signed.hash.hex()}"
    changes: list[dict[str, Any]] = [
        {"row_count": 4},
        {"upto_tx": 201},
        {"prev_hash": b"x" * 32},
        {"rows_digest": bytes(32)},
        {"sealed_at": signed.sealed_at + timedelta(1)},
    ]
    for change in changes:
        assert keys.check(replace(signed, **change)) == "bad signature", change
    other = SealKey(keygen.generate(("AUDIT_SEAL_KEY",))["AUDIT_SEAL_KEY"])
    assert keys.check(seal(other)) == f"signed by unknown key {other.id!r}"


def test_seal_keys_are_read_in_each_form_we_hand_out() -> None:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    key = SealKey(pem)  # the chart's generated form
    signed = seal(key)
    for public in (key.public_text(), public_pem, f"{public_pem},{key.public_text()}"):
        assert SealKeys.parse(public).check(signed) is None
    with pytest.raises(ValueError, match="AUDIT_SEAL_KEY"):
        SealKey("not a key")
    with pytest.raises(ValueError, match="AUDIT_SEAL_PUBLIC_KEYS"):
        SealKeys.parse("bm90IGEga2V5")


def test_keygen_tops_up_an_env_file_from_an_earlier_version() -> None:
    old = "AUDIT_JWT_SECRET=keep-me\nPOSTGRES_PASSWORD=and-me\n"
    added = keygen.missing(old)
    assert not {"AUDIT_JWT_SECRET", "POSTGRES_PASSWORD"} & set(added)
    assert {"AUDIT_EVENT_KEYS", "AUDIT_SEAL_KEY", "AUDIT_SEAL_PUBLIC_KEYS"} <= set(added)
    assert SealKey(added["AUDIT_SEAL_KEY"]).public_text() == added["AUDIT_SEAL_PUBLIC_KEYS"]
    complete = old + "".join(f"{k}={v}\n" for k, v in added.items())
    assert keygen.missing(complete) == {}
    without_public = complete.replace(
        f"AUDIT_SEAL_PUBLIC_KEYS={added['AUDIT_SEAL_PUBLIC_KEYS']}", ""
    )
    assert keygen.missing(without_public) == {
        "AUDIT_SEAL_PUBLIC_KEYS": added["AUDIT_SEAL_PUBLIC_KEYS"]
    }


def test_a_bound_key_signs_as_before_and_checks_only_its_actions() -> None:
    secret = "k" * 32
    keys = EventKeys.parse(f"{'a' * 32}, {bound(secret, ['audit.dlq', 'audit.read'])}")
    mine = EventKeys([secret]).sign(b"x")  # the producer holds the bare secret
    assert keys.check(b"x", mine) is None  # same key id: signatures do not change
    for action in ("audit.dlq", "audit.dlq.replay", "audit.read"):
        assert keys.may_sign(mine, action) is None, action
    for action in ("account.update", "audit.dlqx", "audit.reader", "audit"):
        assert keys.may_sign(mine, action) == f"key {key_id(secret)} may not sign {action}"
    unbound = keys.sign(b"x")  # the first key, not bound: any action
    assert keys.may_sign(unbound, "account.update") is None
