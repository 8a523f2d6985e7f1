"""Completeness: every sequence number the broker gave an event is accounted for, and seals bind
every column of a row.

- ``audit_epochs``: one row per incarnation of the stream's durable (a stream recreated starts
  its sequence numbers again at 1; nothing in a message says which incarnation it came from).
  ``first_seq``: where accounting starts in that incarnation (the durable's ack floor + 1 when
  it was registered: 1 for a new stream, later for an installation upgraded to this version).
- ``audit_events.epoch``: the incarnation a row's ``stream_seq`` belongs to (NULL: stored before
  this version, outside the accounting).
- ``audit_dead_letters``: the durable record of each dead letter (sequence, subject, kind,
  reason, SHA-256 of the bytes), written before the message is acked, so the DLQ stream's own
  limits never erase the accounting.
- ``audit_duplicates``: a message whose event was already stored (a replay after the duplicate
  window gets a new sequence number): its sequence and the event id it repeats.
- ``audit_seals`` version 2: a kind (``rows`` now; ``cut`` for retention), a scope (a partition,
  for retention; empty: the whole table), the ack floor the sealing consumer last read
  (``floor_epoch``, ``floor_first``, ``floor_seq``: every sequence from ``floor_first`` to
  ``floor_seq`` of that epoch was acknowledged, so must be accounted for), and a body (a cut's
  details). Version 1 seals stay as they are and verify as before.

All three new tables are append-only like ``audit_events``, readable by ``audit_reader``, and
the writer may only insert (the database assigns ``recorded_at`` and ``tx_id``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("audit_epochs", "audit_dead_letters", "audit_duplicates")


def upgrade() -> None:
    op.execute("ALTER TABLE audit_events ADD COLUMN epoch integer")  # no default: instant
    op.execute("GRANT INSERT (epoch) ON audit_events TO audit_writer")
    op.execute(
        """
        CREATE TABLE audit_epochs (
            epoch           serial      PRIMARY KEY,
            stream          text        NOT NULL,
            durable         text        NOT NULL,
            durable_created timestamptz NOT NULL,
            first_seq       bigint      NOT NULL,
            recorded_at     timestamptz NOT NULL DEFAULT now(),
            UNIQUE (stream, durable, durable_created)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE audit_dead_letters (
            epoch       integer     NOT NULL,
            stream_seq  bigint      NOT NULL,
            subject     text        NOT NULL,
            kind        text        NOT NULL,
            reason      text        NOT NULL,
            digest      bytea       NOT NULL,  -- sha256 of the message's bytes
            recorded_at timestamptz NOT NULL DEFAULT now(),
            tx_id       xid8        NOT NULL DEFAULT pg_current_xact_id(),
            PRIMARY KEY (epoch, stream_seq)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE audit_duplicates (
            epoch       integer     NOT NULL,
            stream_seq  bigint      NOT NULL,
            event_id    uuid        NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            tx_id       xid8        NOT NULL DEFAULT pg_current_xact_id(),
            PRIMARY KEY (epoch, stream_seq)
        )
        """
    )
    op.execute("CREATE INDEX audit_dead_letters_tx_idx ON audit_dead_letters (tx_id)")
    op.execute("CREATE INDEX audit_duplicates_tx_idx ON audit_duplicates (tx_id)")
    for table in TABLES:
        op.execute(f"REVOKE ALL ON {table} FROM PUBLIC")
        op.execute(
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
        )
        op.execute(f"GRANT SELECT ON {table} TO audit_reader")
    op.execute(
        "GRANT SELECT, INSERT (stream, durable, durable_created, first_seq) ON audit_epochs"
        " TO audit_writer"
    )
    op.execute("GRANT USAGE ON SEQUENCE audit_epochs_epoch_seq TO audit_writer")
    op.execute(
        "GRANT SELECT, INSERT (epoch, stream_seq, subject, kind, reason, digest)"
        " ON audit_dead_letters TO audit_writer"
    )
    op.execute(
        "GRANT SELECT, INSERT (epoch, stream_seq, event_id) ON audit_duplicates TO audit_writer"
    )
    op.execute(
        "ALTER TABLE audit_seals"
        " ADD COLUMN version smallint NOT NULL DEFAULT 1,"
        " ADD COLUMN kind text NOT NULL DEFAULT 'rows',"
        " ADD COLUMN scope text NOT NULL DEFAULT '',"
        " ADD COLUMN floor_epoch integer,"
        " ADD COLUMN floor_first bigint,"
        " ADD COLUMN floor_seq bigint,"
        " ADD COLUMN body bytea"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE audit_seals DROP COLUMN version, DROP COLUMN kind, DROP COLUMN scope,"
        " DROP COLUMN floor_epoch, DROP COLUMN floor_first, DROP COLUMN floor_seq,"
        " DROP COLUMN body"
    )
    for table in TABLES:
        op.execute(f"DROP TABLE {table}")
    op.execute("ALTER TABLE audit_events DROP COLUMN epoch")
