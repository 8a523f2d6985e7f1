"""Consumer pieces that need no server: the ack-subject parser and the COPY text formatter."""

from datetime import UTC, datetime
from uuid import UUID

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from audit_consumer.puller import delivery as _delivery
from audit_consumer.writer import copy_line


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.AUDIT.audit-writer.3.17.9.1700000000000000000.5",  # classic layout
        "$JS.ACK.hub.ACCHASH.AUDIT.audit-writer.3.17.9.1700000000000000000.5.tok",  # domain
    ],
)
def test_delivery_reads_the_same_numbers_as_nats_py(reply: str) -> None:
    msg = Msg(None, subject="audit.events.x", reply=reply)  # type: ignore[arg-type]
    assert _delivery(msg) == (17, 3) == (msg.metadata.sequence.stream, msg.metadata.num_delivered)


def test_delivery_refuses_what_is_not_a_jetstream_ack_subject() -> None:
    with pytest.raises(NotJSMessageError):
        _delivery(Msg(None, subject="x", reply="_INBOX.abc"))  # type: ignore[arg-type]


def test_copy_line_escapes_text_and_json_and_writes_null() -> None:
    line = copy_line(
        (
            UUID(int=1),
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            "a\tb\nc\\d\re",
            None,
            42,
            {"path": "/x\\y", "s": "tab\there"},
        )
    )
    assert line == (
        b"00000000-0000-0000-0000-000000000001\t2026-01-02T03:04:05+00:00\t"
        b"a\\tb\\nc\\\\d\\re\t\\N\t42\t"
        b'{"path":"/x\\\\\\\\y","s":"tab\\\\there"}\n'
    )


@pytest.mark.parametrize("bad", ["nul\x00", "surrogate \ud800"])
def test_copy_line_refuses_text_postgresql_cannot_hold(bad: str) -> None:
    with pytest.raises(ValueError, match="22021"):
        copy_line(("ok", bad))
