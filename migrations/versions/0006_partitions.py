"""Time partitions: ``audit_events`` becomes range-partitioned on ``occurred_at``, so retention
removes a day by dropping a table instead of deleting rows (``audit-retention``, README
"Retention").

- The primary key becomes ``(id, occurred_at)`` (a partitioned table's key must hold its
  partition key). A redelivered event carries the same ``occurred_at`` as its first delivery,
  so the key still makes a redelivery a no-op, even across a partition boundary. A key of the
  database's own time (``recorded_at``, ``tx_id``) would not: a redelivery is a new
  transaction at a new time, so it would be a new key — stored twice.
- No DEFAULT partition: it would swallow rows retention never drops and block
  ``DETACH … CONCURRENTLY``. An event outside the partitions is refused (the consumer
  dead-letters it with the reason, ``audit_consumer/bounds.py``).
- ``audit_partitions``: each attached partition's bounds from the catalog (and ``closed``:
  retention refuses new rows into it before archiving it).
- ``audit_partition_create(lo, hi)``: creates a table and *then* ``ATTACH``es it (a lighter lock
  on ``audit_events`` than ``CREATE … PARTITION OF``) under a ``lock_timeout``, so it never
  queues every COPY behind a long export. ``SECURITY DEFINER``: partitions belong to the owner,
  whose append-only trigger clones to them; only the owner may call it.
- ``audit_partitions_extend(ahead, step)``: partitions from the newest one's end up to
  ``now() + ahead`` — the one thing the writer may do with it (the sealer calls it every round,
  ``audit-setup`` on every run). Bounded, so the writer login cannot make thousands.
- ``audit_partitions_prepend(since, step)``: partitions before the oldest, down to ``since``
  (``audit-retention partitions --from``, e.g. before importing history): owner only.

The populated table is not rewritten: it becomes the first partition for its whole range (its
first day to the day after today). What ``ATTACH`` would otherwise build or scan under lock is
built before, without blocking writers: the unique index on ``(id, occurred_at)``
(``CONCURRENTLY``) and a ``CHECK`` of the range (``NOT VALID``, then validated). The swap itself
takes the table's lock for a moment (catalog changes only). Seals made before still verify: no
row changes.

The downgrade copies every row into a plain table (values unchanged, so seals still verify),
holding the table's lock for the whole copy: for going back soon after an upgrade, not for a
large table (restore the backup taken before upgrading instead).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op
from sqlalchemy import text

from audit_events.model import EVENT_COLUMNS

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WRITER_COLUMNS = ", ".join((*EVENT_COLUMNS, "stream_seq", "signature", "digest", "epoch"))
INDEXES = {  # 0001, 0003 and 0004's, created again on the partitioned table
    "audit_events_resource_idx": "(resource_type, resource_id, occurred_at DESC)",
    "audit_events_actor_idx": "(actor_type, actor_id, occurred_at DESC)",
    "audit_events_tx_idx": "(tx_id, id)",
    "audit_events_occurred_idx": "(occurred_at DESC, id DESC)",
    "audit_events_action_idx": "(action, occurred_at DESC)",
    "audit_events_outcome_idx": "(outcome, occurred_at DESC)",
    "audit_events_source_idx": "(source_ip, occurred_at DESC)",
    "audit_events_denied_source_idx": "(source_ip, occurred_at DESC) WHERE outcome = 'denied'",
    "audit_events_request_idx": "(request_id) WHERE request_id IS NOT NULL",
    "audit_events_trace_idx": "(trace_id) WHERE trace_id IS NOT NULL",
}
FUNCTIONS = r"""
CREATE VIEW audit_partitions AS
SELECT c.relname::text AS name, b[1]::timestamptz AS lo, b[2]::timestamptz AS hi,
       EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid
               AND t.tgname = 'audit_events_closed') AS closed
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
     regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') b
WHERE i.inhparent = 'audit_events'::regclass AND NOT i.inhdetachpending;

CREATE FUNCTION audit_partition_create(lo timestamptz, hi timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET lock_timeout = '5s'
AS $$
DECLARE name text := 'audit_events_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD');
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   name);
    EXECUTE format('ALTER TABLE audit_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, lo, hi);
    EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()', name);
    RETURN name;
END $$;

CREATE FUNCTION audit_partitions_extend(ahead interval, step interval)
RETURNS TABLE (oldest timestamptz, newest timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE top timestamptz;
BEGIN
    IF ahead > interval '366 days' OR step < interval '1 day' OR step > interval '31 days' THEN
        RAISE EXCEPTION 'partitions: ahead at most 366 days, a step of 1 to 31 days'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_try_advisory_xact_lock(hashtext('audit-partitions')) THEN  -- else another is at it
        SELECT max(p.hi) INTO top FROM audit_partitions p;
        top := coalesce(top, date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');
        WHILE top < now() + ahead LOOP
            PERFORM audit_partition_create(top, top + step);
            top := top + step;
        END LOOP;
    END IF;
    RETURN QUERY SELECT min(p.lo) FILTER (WHERE NOT p.closed), max(p.hi) FROM audit_partitions p;
END $$;

CREATE FUNCTION audit_partitions_prepend(since timestamptz, step interval) RETURNS integer
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE bottom timestamptz; made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('audit-partitions'));
    SELECT min(p.lo) INTO bottom FROM audit_partitions p;
    WHILE bottom > since LOOP
        PERFORM audit_partition_create(bottom - step, bottom);
        bottom := bottom - step;
        made := made + 1;
    END LOOP;
    RETURN made;
END $$;

CREATE FUNCTION audit_events_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'partition % is closed: retention is removing it', TG_TABLE_NAME
        USING ERRCODE = 'check_violation';
END $$;

REVOKE ALL ON FUNCTION audit_partition_create(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_partitions_extend(interval, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_partitions_prepend(timestamptz, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_partitions_extend(interval, interval) TO audit_writer;
GRANT SELECT ON audit_partitions TO audit_writer, audit_reader;
"""


def upgrade() -> None:
    conn = op.get_bind()
    bounds = conn.execute(
        text(
            "SELECT date_trunc('day', coalesce(min(occurred_at), now()) AT TIME ZONE 'UTC'),"
            " greatest(date_trunc('day', max(occurred_at) AT TIME ZONE 'UTC'),"
            "          date_trunc('day', now() AT TIME ZONE 'UTC')) + interval '1 day'"
            " FROM audit_events"
        )
    ).one()
    lo, hi = (f"{b.isoformat()}+00:00" for b in bounds)
    first = f"audit_events_p{bounds[0]:%Y%m%d}"
    with op.get_context().autocommit_block():  # nothing here blocks the writers
        op.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS audit_events_key"
            " ON audit_events (id, occurred_at)"
        )
        op.execute(
            "ALTER TABLE audit_events ADD CONSTRAINT audit_events_range"
            f" CHECK (occurred_at >= '{lo}' AND occurred_at < '{hi}') NOT VALID"
        )
        op.execute("ALTER TABLE audit_events VALIDATE CONSTRAINT audit_events_range")
    op.execute("SET LOCAL lock_timeout = '30s'")  # the swap: catalog changes under the lock
    op.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
    for name in INDEXES:
        op.execute(f"ALTER INDEX {name} RENAME TO {first}{name.removeprefix('audit_events')}")
    op.execute("ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey")
    op.execute(
        f"ALTER TABLE audit_events ADD CONSTRAINT {first}_pkey"
        " PRIMARY KEY USING INDEX audit_events_key"
    )
    op.execute("DROP TRIGGER audit_events_no_change ON audit_events")  # the parent's is cloned
    op.execute(f"ALTER TABLE audit_events RENAME TO {first}")
    op.execute(f"REVOKE ALL ON {first} FROM audit_writer, audit_reader")
    op.execute(
        f"CREATE TABLE audit_events (LIKE {first} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        " PARTITION BY RANGE (occurred_at)"
    )
    op.execute("ALTER TABLE audit_events DROP CONSTRAINT audit_events_range")
    op.execute("ALTER TABLE audit_events ADD PRIMARY KEY (id, occurred_at)")
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON audit_events {definition}")
    op.execute(
        "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
    )
    op.execute("REVOKE ALL ON audit_events FROM PUBLIC")
    op.execute(f"GRANT SELECT, INSERT ({WRITER_COLUMNS}) ON audit_events TO audit_writer")
    op.execute("GRANT SELECT ON audit_events TO audit_reader")
    op.execute(
        f"ALTER TABLE audit_events ATTACH PARTITION {first} FOR VALUES FROM ('{lo}') TO ('{hi}')"
    )
    op.execute(f"ALTER TABLE {first} DROP CONSTRAINT audit_events_range")
    op.execute(FUNCTIONS)
    op.execute("SELECT audit_partitions_extend(interval '7 days', interval '1 day')")


def downgrade() -> None:
    """Back to one table: every row copied as it is (the database's values too, so seals still
    verify), under the table's lock for as long as the copy takes."""
    op.execute(
        "DROP VIEW audit_partitions;"
        " DROP FUNCTION audit_partitions_prepend(timestamptz, interval);"
        " DROP FUNCTION audit_partitions_extend(interval, interval);"
        " DROP FUNCTION audit_partition_create(timestamptz, timestamptz);"
        " DROP FUNCTION audit_events_refuse();"
        " LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE;"
        " ALTER TABLE audit_events RENAME TO audit_events_partitioned"
    )
    for name in (*INDEXES, "audit_events_pkey"):
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_partitioned")
    op.execute(
        "CREATE TABLE audit_events"
        " (LIKE audit_events_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS);"
        " INSERT INTO audit_events SELECT * FROM audit_events_partitioned;"
        " ALTER TABLE audit_events ADD PRIMARY KEY (id);"
        " DROP TABLE audit_events_partitioned"
    )
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON audit_events {definition}")
    op.execute(
        "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();"
        " CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();"
        " REVOKE ALL ON audit_events FROM PUBLIC;"
        f" GRANT SELECT, INSERT ({WRITER_COLUMNS}) ON audit_events TO audit_writer;"
        " GRANT SELECT ON audit_events TO audit_reader"
    )
