"""Least privilege and append-only: a writer role that can only INSERT and SELECT, and a
trigger that rejects UPDATE, DELETE and TRUNCATE for everyone but the table's owner.

The consumer connects as a member of ``audit_writer`` (``AUDIT_WRITER_DATABASE_URL``), so even
a compromised consumer cannot rewrite history; the owner (who runs migrations) keeps the power
to repair data deliberately.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Roles are cluster-wide: another database on the same server may have created it already.
    op.execute(
        """
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_writer') THEN
                CREATE ROLE audit_writer NOLOGIN;
            END IF;
        END $$
        """
    )
    op.execute("GRANT USAGE ON SCHEMA public TO audit_writer")
    op.execute("REVOKE ALL ON audit_events FROM PUBLIC")
    op.execute("GRANT SELECT, INSERT ON audit_events TO audit_writer")
    op.execute(
        """
        CREATE FUNCTION audit_events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF current_user <> (SELECT relowner::regrole::text FROM pg_class WHERE oid = TG_RELID)
            THEN
                RAISE EXCEPTION 'audit_events is append-only: % by % is not allowed',
                    TG_OP, current_user USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
    op.execute("DROP TRIGGER audit_events_no_change ON audit_events")
    op.execute("DROP FUNCTION audit_events_append_only()")
    op.execute("REVOKE ALL ON audit_events FROM audit_writer")
    op.execute("REVOKE USAGE ON SCHEMA public FROM audit_writer")
    # The role stays: other databases on this server may still use it.
