"""Prometheus metrics of ``audit-query`` (``/metrics``): the reads it answered by kind and
outcome, the reads it refused because their record could not be stored, and whether it is
connected to NATS. Every label set exists at 0 from the start, so an alert on the first
refusal fires (``increase()`` of a series born at 1 is 0)."""

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from audit_events.authorship import READS as ACTIONS  # what it records, and its key may sign

READS = Counter(
    "audit_query_reads_total",
    "Records of reads stored (feed polls and denied reads: one per fold window)",
    ["action", "outcome"],
)
UNRECORDED = Counter(
    "audit_query_unrecorded_total", "Reads refused with 503: their record could not be stored"
)
NATS_CONNECTED = Gauge("audit_query_nats_connected", "1 if connected to NATS (reads are recorded)")

for _action in ACTIONS:
    for _outcome in ("success", "denied"):
        READS.labels(_action, _outcome)


def render(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
