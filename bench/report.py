"""The benchmark's markdown table: every measurement with its ratio to the ceiling it is judged
against, and whether it meets its target."""

import os
from typing import Any

from bench import queries
from bench.common import QUERY_INDEXES


def table(r: dict[str, dict[str, Any]], workers: int) -> str:
    db, ceiling = r["db_ceiling"], r["broker_ceiling"]
    lean = r["db_ceiling_without_query_indexes"]
    broker, nats_py = ceiling["per_s"], ceiling["nats_py_fetch_per_s"]
    c1, c2 = r["consumer_1p"]["per_s"], r["consumer_2p"]["per_s"]
    plain, verify = r["consumer_1p_without_integrity"]["per_s"], r["verify"]
    copy = verify["copy_per_s"]
    base = r["per_message_baseline"]["per_s"]
    api, noop = r[f"api_publish_w{workers}"], r[f"api_noop_w{workers}"]
    e2e, fd = r[f"end_to_end_w{workers}"], r[f"feed_delay_w{workers}"]
    cores = os.cpu_count() or 1
    # Where the CPU goes per stored event (2 processes: the run that keeps every core busy).
    cost = {k: r["consumer_2p"][f"{k}_cpu_us"] for k in ("consumer", "postgres", "nats")}
    bound = cores * 1e6 / sum(cost.values())
    # What 0.75 x the broker ceiling would take: one consumer process is one thread, so its
    # CPU per event must fit in one core at that rate; and the three processes must fit in all.
    target = 0.75 * broker
    budget_us = 1e6 / target
    cores_needed = target * sum(cost.values()) / 1e6

    def ok(flag: bool) -> str:
        return "yes" if flag else "**no**"

    lines = [
        "| measurement | value | ratio | target |",
        "|---|---:|---:|---|",
        f"| DB ceiling: COPY into audit_events (indexes on) | {db['per_s']:,.0f} rows/s "
        f"| PostgreSQL {db['postgres_cpu_us']:.1f} µs CPU/row | |",
        f"| the same without the query service's {len(QUERY_INDEXES)} indexes (migration 0004) "
        f"| {lean['per_s']:,.0f} rows/s | with them: {db['per_s'] / lean['per_s']:.2f} × "
        f"(PostgreSQL {lean['postgres_cpu_us']:.1f} → {db['postgres_cpu_us']:.1f} µs/row) | |",
        f"| broker ceiling: fetch + ack, no DB (the consumer's puller) | {broker:,.0f} msgs/s "
        f"| nats-py fetch(): {nats_py:,.0f} msgs/s; CPU/msg: client "
        f"{ceiling['fetch_ack_cpu_us']:.1f} µs, NATS {ceiling['nats_cpu_us']:.1f} µs | |",
        f"| consumer, 1 process, draining {r['consumer_1p']['events']:,} | {c1:,.0f} events/s "
        f"| {c1 / broker:.2f} × broker ({c1 / nats_py:.2f} × nats-py fetch) "
        f"| ≥ 0.75 × broker: {ok(c1 >= 0.75 * broker)} |",
        f"| consumer, 1 process, without authorship checks and sealing | {plain:,.0f} events/s "
        f"| with them: {c1 / plain:.2f} × | ≥ 0.85: {ok(c1 >= 0.85 * plain)} |",
        f"| consumer, 2 processes | {c2:,.0f} events/s | {c2 / c1:.2f} × 1 process | |",
        f"| audit-verify, {verify['rows']:,} rows in {verify['seals']:,} seals, with the event "
        f"key, --jobs {verify['jobs']} | {verify['per_s_jobs']:,.0f} rows/s (1 job: "
        f"{verify['per_s']:,.0f}; 1 job, seals only: {verify['per_s_no_key']:,.0f}) "
        f"| {verify['per_s_jobs'] / copy:.2f} × COPY TO STDOUT ({copy:,.0f} rows/s) "
        f"| ≥ 0.25: {ok(verify['per_s_jobs'] >= 0.25 * copy)} |",
        f"| CPU per stored event (2 processes) | consumer {cost['consumer']:.1f} µs, "
        f"PostgreSQL {cost['postgres']:.1f} µs, NATS {cost['nats']:.1f} µs "
        f"| {cores} cores allow ≤ {bound:,.0f} events/s; 2 processes reach {c2 / bound:.0%} | |",
        f"| 0.75 × broker = {target:,.0f} events/s would need | one process at ≤ "
        f"{budget_us:.1f} µs CPU/event (now {cost['consumer']:.1f}, of which fetch + ack "
        f"{ceiling['fetch_ack_cpu_us']:.1f}); {cores_needed:.1f} cores at today's costs "
        f"| this machine: {cores} cores | |",
        f"| per-message baseline (fetch 1, insert, commit, ack) | {base:,.0f} events/s "
        f"| consumer = {c1 / base:.1f} × baseline | ≥ 10: {ok(c1 >= 10 * base)} |",
        f"| API PATCH, publish + JetStream ack ({workers} worker(s), 64 conns) "
        f"| {api['rps']:,.0f} req/s, p50 {api['p50_ms']:.1f} ms, p99 {api['p99_ms']:.1f} ms "
        f"| {api['rps'] / noop['rps']:.2f} × no-op "
        f"| ≥ 0.6: {ok(api['rps'] >= 0.6 * noop['rps'])} |",
        f"| API PATCH, no-op publish | {noop['rps']:,.0f} req/s, p50 {noop['p50_ms']:.1f} ms, "
        f"p99 {noop['p99_ms']:.1f} ms | CPU/request: API {api['api_cpu_us']:.0f} µs with "
        f"publish, {noop['api_cpu_us']:.0f} µs without; NATS {api['nats_cpu_us']:.0f} µs/publish "
        f"| |",
        f"| load generator vs GET /healthz (its own ceiling here) "
        f"| {r[f'loadgen_healthz_w{workers}']['rps']:,.0f} "
        f"req/s | | not the bottleneck if ≫ the rows above |",
        f"| end to end at {e2e['rate']:,.0f} req/s (half the API max): ack → row | "
        f"p50 {e2e['p50_ms']:.0f} ms, p99 {e2e['p99_ms']:.0f} ms | | p99 ≤ 250 ms: "
        f"{ok(e2e['p99_ms'] <= 250)} |",
        f"| feed, under that load: row visible → handed out by the feed (commit horizon) "
        f"| p50 {fd['p50_ms']:.0f} ms, p99 {fd['p99_ms']:.0f} ms, max {fd['max_ms']:.0f} ms "
        f"| {fd['events']:,} rows, each handed out | |",
    ]
    one, r3 = r["shape_single"], r["shape_r3"]
    lines += [
        f"| publish → JetStream ack, 16 in flight, fsync always: one node | p50 "
        f"{one['publish_p50_ms']:.1f} ms, p99 {one['publish_p99_ms']:.1f} ms, "
        f"{one['publish_per_s']:,.0f} msgs/s | | |",
        f"| the same on three nodes, stream R3 (loopback, one machine) | p50 "
        f"{r3['publish_p50_ms']:.1f} ms, p99 {r3['publish_p99_ms']:.1f} ms, "
        f"{r3['publish_per_s']:,.0f} msgs/s | {r3['publish_per_s'] / one['publish_per_s']:.2f} × "
        f"one node's rate | |",
        f"| consumer, 1 process, draining: one node vs three nodes (R3) "
        f"| {one['consumer_per_s']:,.0f} vs {r3['consumer_per_s']:,.0f} events/s "
        f"| {r3['consumer_per_s'] / one['consumer_per_s']:.2f} × | |",
    ]
    reads = [r[f"query {name}"] for name in queries.QUESTIONS]
    for name, q in zip(queries.QUESTIONS, reads, strict=True):
        bound = 2 * q["sql_p50_ms"] + 2
        lines.append(
            f"| query: {name} (GET /audit-events, 100 rows) | p50 {q['p50_ms']:.1f} ms, "
            f"p99 {q['p99_ms']:.1f} ms | the same SQL directly: p50 {q['sql_p50_ms']:.1f} ms, "
            f"p99 {q['sql_p99_ms']:.1f} ms | ≤ 2 × + 2 ms: {ok(q['p50_ms'] <= bound)} |"
        )
    export, feed = r["export"], r["feed"]
    lines += [
        f"| export, NDJSON, {export['rows']:,} rows | {export['per_s']:,.0f} rows/s, peak RSS "
        f"{export['peak_rss_mb']:.0f} MB | {export['per_s'] / export['copy_per_s']:.2f} × "
        f"the same COPY run directly ({export['copy_per_s']:,.0f} rows/s; `SELECT *` "
        f"unformatted: {export['raw_copy_per_s']:,.0f}) "
        f"| ≥ 0.5: {ok(export['per_s'] >= 0.5 * export['copy_per_s'])} |",
        f"| feed, from the start, 1,000 per poll | {feed['per_s']:,.0f} rows/s | | |",
    ]
    return "\n".join(lines + _retention(r, ok))


def _retention(r: dict[str, dict[str, Any]], ok: Any) -> list[str]:
    """The partitions' and retention's rows (bench/retention.py)."""
    copy, drop, archive = r["partitioned_copy"], r["drop_partition"], r["archive"]
    drain, size = r["retention_drain"], r["bytes_per_row"]
    return [
        f"| COPY into the partitioned table vs an unpartitioned copy (same indexes) "
        f"| {copy['per_s']:,.0f} vs {copy['flat_per_s']:,.0f} rows/s | {copy['ratio']:.2f} × "
        f"| ≥ 0.95: {ok(copy['ratio'] >= 0.95)} |",
        f"| drop a partition of {drop['big_rows']:,} rows vs one of 1/100 as many "
        f"| {drop['big_ms']:.0f} vs {drop['small_ms']:.0f} ms | {drop['ratio']:.1f} × | |",
        f"| archive a partition vs `COPY … TO STDOUT` of it | {archive['per_s']:,.0f} vs "
        f"{archive['copy_to_per_s']:,.0f} rows/s, {archive['bytes_per_row']:.0f} B/row "
        f"| {archive['ratio']:.2f} × | ≥ 0.5: {ok(archive['ratio'] >= 0.5)} |",
        f"| consumer draining while a retention run removes a partition, vs alone "
        f"| {drain['per_s']:,.0f} vs {drain['alone_per_s']:,.0f} events/s "
        f"| {drain['ratio']:.2f} × | ≥ 0.9: {ok(drain['ratio'] >= 0.9)} |",
        f"| bytes per row in PostgreSQL (table {size['table']:.0f}, indexes "
        f"{size['total'] - size['table'] - size['seal_entry']:.0f}, seal entry "
        f"{size['seal_entry']:.0f}) | {size['total']:.0f} B | | |",
    ]
