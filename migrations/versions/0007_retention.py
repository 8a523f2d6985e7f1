"""Retention: legal holds and cut requests (``audit-retention``, README "Retention").

- ``audit_holds``: a time range no retention run may remove, with why; ``audit_hold_releases``
  ends one. Both append-only: a hold's history stays on the record.
- ``audit_cut_requests``: a retention run asks for a partition's cut (with its archive
  manifest's SHA-256); a consumer's sealer checks the partition (closed, not held, every row
  sealed), computes what the cut removes and signs it into the chain. The job never holds the
  sealing key; the sealer never trusts the request beyond the manifest hash it cannot see.

The owner (retention's login) inserts; the writer (the sealer) and the reader only read.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("audit_holds", "audit_hold_releases", "audit_cut_requests")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_holds (
            id         serial      PRIMARY KEY,
            lo         timestamptz NOT NULL,
            hi         timestamptz NOT NULL CHECK (hi > lo),
            reason     text        NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            created_by text        NOT NULL DEFAULT current_user
        );
        CREATE TABLE audit_hold_releases (
            hold_id     integer     PRIMARY KEY REFERENCES audit_holds,
            reason      text        NOT NULL,
            released_at timestamptz NOT NULL DEFAULT now(),
            released_by text        NOT NULL DEFAULT current_user
        );
        CREATE TABLE audit_cut_requests (
            id              serial      PRIMARY KEY,
            partition       text        NOT NULL,
            manifest_sha256 bytea       NOT NULL,
            requested_at    timestamptz NOT NULL DEFAULT now(),
            requested_by    text        NOT NULL DEFAULT current_user
        );
        CREATE VIEW audit_active_holds AS
        SELECT h.* FROM audit_holds h
        WHERE NOT EXISTS (SELECT FROM audit_hold_releases r WHERE r.hold_id = h.id);
        """
    )
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
        op.execute(f"GRANT SELECT ON {table} TO audit_writer, audit_reader")
    op.execute("GRANT SELECT ON audit_active_holds TO audit_writer, audit_reader")
    # A partition's seals and its cut, found without reading the whole chain (sealer, retention).
    op.execute("CREATE INDEX audit_seals_scope_idx ON audit_seals (scope, kind, seq)")
    op.execute("CREATE INDEX audit_seals_cut_idx ON audit_seals (seq) WHERE kind = 'cut'")


def downgrade() -> None:
    op.execute("DROP INDEX audit_seals_cut_idx")
    op.execute("DROP INDEX audit_seals_scope_idx")
    op.execute("DROP VIEW audit_active_holds")
    for table in reversed(TABLES):
        op.execute(f"DROP TABLE {table}")
