"""The record of what retention does: each partition removed and each legal hold added or
released is an audit event (``audit.retention.partition_removed``, ``.hold_added``,
``.hold_released``) — the deletion of audit data is itself on the record. Signed with this
tool's own key (``AUDIT_EVENT_KEYS``; where keys are checked it is bound to
``audit.retention``) and published under its own broker identity (``audit-retention``: it may
publish ``audit.retention.*`` events and nothing else), each acknowledged by JetStream before
the command goes on.

A removal's record is derived from its cut (id and time): a rerun that finds it stored does not
publish it again, and one published twice is stored once (JetStream's duplicate window, then
the table's key)."""

import asyncio
import uuid
from datetime import datetime
from typing import Any

import nats

from audit_events import AuditEvent
from audit_events.authorship import signed
from audit_events.broker import RETENTION
from audit_events.cuts import Cut
from audit_events.publishing import ProducerSettings
from audit_events.seals import Seal

_RECORDS = uuid.UUID("6f1d2c3e-7a55-4b8e-9c1f-2d4e5a6b7c8d")  # namespace of removal ids


class Recorder:
    """Publishes the records of one command (one connection)."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.settings = settings

    def __call__(self, events: list[AuditEvent]) -> None:
        asyncio.run(self._publish(events))

    async def _publish(self, events: list[AuditEvent]) -> None:
        names = self.settings.names
        nc = await nats.connect(**self.settings.connect_options(RETENTION), connect_timeout=5)
        try:
            js = nc.jetstream()
            for event in events:
                data, headers = signed(event, self.settings.keys)
                await js.publish(
                    names.event_subject(event.action), data, stream=names.stream,
                    headers=headers, timeout=self.settings.publish_timeout_seconds,
                )  # fmt: skip
        finally:
            await nc.close()


def removal(seal: Seal, cut: Cut) -> AuditEvent:
    """The record of one removed partition, from its cut."""
    return AuditEvent.model_validate(
        {
            "id": uuid.uuid5(_RECORDS, f"cut:{seal.hash.hex()}"),
            "occurred_at": seal.sealed_at,
            "actor_type": "service",
            "actor_id": "audit-retention",
            "action": "audit.retention.partition_removed",
            "resource_type": "partition",
            "resource_id": cut.partition,
            "outcome": "success",
            "metadata": {
                "from": cut.lo.isoformat(),
                "to": cut.hi.isoformat(),
                "rows": cut.rows,
                "cut_seal": seal.seq,
                "seals": len(cut.seals) + len(cut.legacy),
                "archive_manifest_sha256": cut.manifest_sha256,
            },
        }
    )


def hold(verb: str, actor: str, hold_id: int, details: dict[str, Any]) -> AuditEvent:
    """The record of a legal hold added or released."""
    return AuditEvent.model_validate(
        {
            "id": uuid.uuid4(),
            "occurred_at": datetime.now().astimezone(),
            "actor_type": "operator",
            "actor_id": actor,
            "action": f"audit.retention.hold_{verb}",
            "resource_type": "legal_hold",
            "resource_id": str(hold_id),
            "outcome": "success",
            "metadata": details,
        }
    )
