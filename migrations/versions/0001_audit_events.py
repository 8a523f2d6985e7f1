"""Create audit_events, one row per audit event, and the indexes its two questions need.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_events (
            id            uuid        PRIMARY KEY,            -- UUIDv7 from the API = Nats-Msg-Id
            occurred_at   timestamptz NOT NULL,               -- when (API clock)
            recorded_at   timestamptz NOT NULL DEFAULT now(), -- when the consumer committed it
            actor_type    text        NOT NULL,               -- who: user | anonymous | service
            actor_id      text        NOT NULL,
            action        text        NOT NULL,               -- what: resource.verb
            resource_type text        NOT NULL,               -- on what
            resource_id   text        NOT NULL,
            outcome       text        NOT NULL
                          CHECK (outcome IN ('success', 'failure', 'denied')),
            source_ip     inet,                               -- where from
            user_agent    text,
            request_id    text,                               -- correlation
            trace_id      text,
            stream_seq    bigint      NOT NULL,               -- JetStream order
            metadata      jsonb       NOT NULL DEFAULT '{}'   -- method, path, status, field names
        )
        """
    )
    # "History of this resource, newest first."
    op.execute(
        "CREATE INDEX audit_events_resource_idx"
        " ON audit_events (resource_type, resource_id, occurred_at DESC)"
    )
    # "What did this actor do, newest first."
    op.execute(
        "CREATE INDEX audit_events_actor_idx"
        " ON audit_events (actor_type, actor_id, occurred_at DESC)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit_events")
