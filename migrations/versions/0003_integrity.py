"""Tamper evidence: authorship and transaction ids on every row, batch entries, signed seals,
and a read-only role for ``audit-verify`` (and the query service).

- ``audit_events.signature``: the producer's ``Audit-Signature`` (``<key id>:<HMAC>``), NULL for
  rows stored without one (those from before this migration).
- ``audit_events.tx_id``: the writing transaction (``pg_current_xact_id()``), the order rows are
  sealed (and fed) in; see ``audit_events/horizon.py``.
- ``recorded_at`` and ``tx_id`` are the database's: the writer may insert every other column
  and these two not at all (column privileges), so a backdated ``recorded_at`` is impossible.
- ``audit_batches``: per committed batch, one entry per inserted row (flag, id, SHA-256 of the
  row's canonical bytes), written in the row's own transaction.
- ``audit_seals``: the signed hash chain over those entries (``audit_events/seals.py``).
- Rows already stored get one batch of entries flagged UNSIGNED here, so the first seal covers
  them too and ``audit-verify`` can tell them from rows inserted behind the pipeline's back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from typing import Any

from alembic import op
from sqlalchemy import text

from audit_events.model import EVENT_COLUMNS, canonical, canonical_ip
from audit_events.seals import UNSIGNED, entry

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WRITER_COLUMNS = ", ".join((*EVENT_COLUMNS, "stream_seq", "signature"))


def upgrade() -> None:
    op.execute("ALTER TABLE audit_events ADD COLUMN signature text")
    op.execute(
        "ALTER TABLE audit_events ADD COLUMN tx_id xid8 NOT NULL DEFAULT pg_current_xact_id()"
    )
    op.execute("CREATE INDEX audit_events_tx_idx ON audit_events (tx_id)")
    op.execute(
        """
        CREATE TABLE audit_batches (
            tx_id      xid8        NOT NULL DEFAULT pg_current_xact_id(),
            created_at timestamptz NOT NULL DEFAULT now(),
            entries    bytea       NOT NULL  -- 49 bytes per row: flag, id, sha256(canonical)
        )
        """
    )
    op.execute("CREATE INDEX audit_batches_tx_idx ON audit_batches (tx_id)")
    op.execute(
        """
        CREATE TABLE audit_seals (
            seq         bigint      PRIMARY KEY,
            from_tx     xid8        NOT NULL,  -- covers batches with from_tx <= tx_id < upto_tx
            upto_tx     xid8        NOT NULL,
            row_count   bigint      NOT NULL,
            rows_digest bytea       NOT NULL,  -- sha256 of the entries, in (tx_id, entries) order
            prev_hash   bytea       NOT NULL,  -- the previous seal's hash (zeros for the first)
            sealed_at   timestamptz NOT NULL,
            key_id      text        NOT NULL,  -- which Ed25519 sealing key signed it
            signature   bytea       NOT NULL,
            hash        bytea       NOT NULL   -- sha256 of the signed payload (what to pin)
        )
        """
    )
    for table in ("audit_batches", "audit_seals"):
        op.execute(f"REVOKE ALL ON {table} FROM PUBLIC")
        op.execute(
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
        )
    op.execute("REVOKE INSERT ON audit_events FROM audit_writer")
    op.execute(f"GRANT INSERT ({WRITER_COLUMNS}) ON audit_events TO audit_writer")
    op.execute("GRANT SELECT, INSERT (entries) ON audit_batches TO audit_writer")
    op.execute("GRANT SELECT, INSERT ON audit_seals TO audit_writer")
    op.execute(
        """
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_reader') THEN
                CREATE ROLE audit_reader NOLOGIN;
            END IF;
        END $$
        """
    )
    op.execute("GRANT USAGE ON SCHEMA public TO audit_reader")
    op.execute("GRANT SELECT ON audit_events, audit_batches, audit_seals TO audit_reader")
    _enter_existing_rows()


def _enter_existing_rows(chunk: int = 10_000) -> None:
    """Entries (flagged UNSIGNED) for the rows stored before this migration, in its own
    transaction: the same ``tx_id`` the new column just gave those rows."""
    conn = op.get_bind()
    columns = ", ".join("host(source_ip)" if c == "source_ip" else c for c in EVENT_COLUMNS)
    select = text(f"SELECT {columns} FROM audit_events")  # noqa: S608
    rows = conn.execute(select).yield_per(chunk)
    for part in rows.partitions():
        blob = b"".join(
            entry(values[0], canonical(_model_form(values)), UNSIGNED) for values in part
        )
        conn.execute(text("INSERT INTO audit_batches (entries) VALUES (:e)"), {"e": blob})


def _model_form(values: Any) -> tuple[Any, ...]:
    """The row's values as the model holds them (the address in canonical text)."""
    ip = EVENT_COLUMNS.index("source_ip")
    address = values[ip] and canonical_ip(values[ip])
    return (*values[:ip], address, *values[ip + 1 :])


def downgrade() -> None:
    op.execute("REVOKE ALL ON audit_events, audit_batches, audit_seals FROM audit_reader")
    op.execute("REVOKE USAGE ON SCHEMA public FROM audit_reader")
    op.execute("REVOKE INSERT ON audit_events FROM audit_writer")
    op.execute("GRANT INSERT ON audit_events TO audit_writer")
    op.execute("DROP TABLE audit_seals")
    op.execute("DROP TABLE audit_batches")
    op.execute("ALTER TABLE audit_events DROP COLUMN tx_id, DROP COLUMN signature")
