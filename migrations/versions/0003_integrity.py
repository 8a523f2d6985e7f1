"""Tamper evidence: authorship, a digest and a transaction id on every row, signed seals, and a
read-only role for ``audit-verify`` (and the query service).

- ``audit_events.signature``: the producer's ``Audit-Signature`` (``<key id>:<HMAC>``), NULL for
  rows stored without one (those from before this migration).
- ``audit_events.digest``: SHA-256 of the row's canonical bytes, computed by the consumer that
  wrote it; what the sealer seals (the verifier never trusts it: it recomputes).
- ``audit_events.tx_id``: the writing transaction (``pg_current_xact_id()``), the order rows are
  sealed (and fed) in; see ``audit_events/horizon.py``.
- ``recorded_at`` and ``tx_id`` are the database's: the writer may insert every other column
  and these two not at all (column privileges), so a backdated ``recorded_at`` is impossible.
- ``audit_seals``: the signed hash chain, each seal listing the rows it covers
  (``audit_events/seals.py``).
- Rows already stored get their digest here, so the first seal covers them too (unsigned).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import hashlib
from typing import Any

from alembic import op
from sqlalchemy import bindparam, text

from audit_events.model import EVENT_COLUMNS, canonical, canonical_ip

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WRITER_COLUMNS = ", ".join((*EVENT_COLUMNS, "stream_seq", "signature", "digest"))


def upgrade() -> None:
    op.execute("ALTER TABLE audit_events ADD COLUMN signature text, ADD COLUMN digest bytea")
    op.execute(
        "ALTER TABLE audit_events ADD COLUMN tx_id xid8 NOT NULL DEFAULT pg_current_xact_id()"
    )
    _digest_existing_rows()
    op.execute("ALTER TABLE audit_events ALTER COLUMN digest SET NOT NULL")
    # (tx_id, id): seals and audit-verify read ranges of tx_id; the feed pages on the pair.
    op.execute("CREATE INDEX audit_events_tx_idx ON audit_events (tx_id, id)")
    op.execute(
        """
        CREATE TABLE audit_seals (
            seq         bigint      PRIMARY KEY,
            from_tx     xid8        NOT NULL,  -- covers rows with from_tx <= tx_id < upto_tx
            upto_tx     xid8        NOT NULL,
            row_count   bigint      NOT NULL,
            rows_digest bytea       NOT NULL,  -- sha256 of entries
            prev_hash   bytea       NOT NULL,  -- the previous seal's hash (zeros for the first)
            sealed_at   timestamptz NOT NULL,
            key_id      text        NOT NULL,  -- which Ed25519 sealing key signed it
            signature   bytea       NOT NULL,
            hash        bytea       NOT NULL,  -- sha256 of the signed payload (what to pin)
            entries     bytea       NOT NULL   -- per row, in (tx_id, id) order: flag, id, digest
        )
        """
    )
    op.execute("REVOKE ALL ON audit_seals FROM PUBLIC")
    op.execute(
        "CREATE TRIGGER audit_seals_no_change BEFORE UPDATE OR DELETE ON audit_seals"
        " FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON audit_seals"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
    )
    op.execute("REVOKE INSERT ON audit_events FROM audit_writer")
    op.execute(f"GRANT INSERT ({WRITER_COLUMNS}) ON audit_events TO audit_writer")
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
    op.execute("GRANT SELECT ON audit_events, audit_seals TO audit_reader")


def _digest_existing_rows(chunk: int = 10_000) -> None:
    """The digest of every row stored before this migration (as the owner: the append-only
    trigger lets the owner through)."""
    conn = op.get_bind()
    columns = ", ".join("host(source_ip)" if c == "source_ip" else c for c in EVENT_COLUMNS)
    select = text(f"SELECT {columns} FROM audit_events")  # noqa: S608
    update = text("UPDATE audit_events SET digest = :d WHERE id = :id").bindparams(
        bindparam("d"), bindparam("id")
    )
    rows = conn.execute(select).yield_per(chunk)
    for part in rows.partitions():
        values = [
            {"id": v[0], "d": hashlib.sha256(canonical(_model_form(v))).digest()} for v in part
        ]
        conn.execute(update, values)


def _model_form(values: Any) -> tuple[Any, ...]:
    """The row's values as the model holds them (the address in canonical text)."""
    ip = EVENT_COLUMNS.index("source_ip")
    address = values[ip] and canonical_ip(values[ip])
    return (*values[:ip], address, *values[ip + 1 :])


def downgrade() -> None:
    op.execute("REVOKE ALL ON audit_events, audit_seals FROM audit_reader")
    op.execute("REVOKE USAGE ON SCHEMA public FROM audit_reader")
    op.execute("REVOKE INSERT ON audit_events FROM audit_writer")
    op.execute("GRANT INSERT ON audit_events TO audit_writer")
    op.execute("DROP TABLE audit_seals")
    op.execute(
        "ALTER TABLE audit_events DROP COLUMN tx_id, DROP COLUMN signature, DROP COLUMN digest"
    )
