"""Indexes for the query service: every filter of ``GET /audit-events`` (and the everyday
"denied requests from this address") is answered, newest first, by an index scan that reads
little more than it returns (``tests/integration/test_query_plans.py`` checks the plans on
200,000 rows). ``actor_id`` or ``resource_id`` alone use 0001's indexes (PostgreSQL 18 skips
their leading type column). What they cost the consumer's COPY: docs/performance.md.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = {
    "audit_events_occurred_idx": "(occurred_at DESC, id DESC)",
    "audit_events_action_idx": "(action, occurred_at DESC)",
    "audit_events_outcome_idx": "(outcome, occurred_at DESC)",
    "audit_events_source_idx": "(source_ip, occurred_at DESC)",
    # "Denied requests from this address or network": a partial index, 5 % of the rows here.
    "audit_events_denied_source_idx": "(source_ip, occurred_at DESC) WHERE outcome = 'denied'",
    "audit_events_request_idx": "(request_id) WHERE request_id IS NOT NULL",
    "audit_events_trace_idx": "(trace_id) WHERE trace_id IS NOT NULL",
}


def upgrade() -> None:
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON audit_events {definition}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX {name}")
