"""Writing one partition's archive (``audit_events/archives.py`` says what it holds): rows
streamed from PostgreSQL in ``(tx_id, id)`` order into gzip, the seals listing them whole, then
the manifest. Written into ``<name>.partial`` and renamed, so a crash leaves no archive that
looks finished; a rerun writes it again."""

import gzip
import shutil
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads

from audit_events.archives import FORMAT, MANIFEST, ROWS, SEALS, row_line, seal_line, sha256_hex
from audit_events.cuts import LEGACY_SEALS
from audit_events.model import STORED_EVENT, canonical, stored_values
from audit_events.seals import SEAL_COLUMNS, seal_of

_ROWS = (
    "SELECT signature, tx_id::text::bigint, recorded_at, stream_seq, epoch,"  # noqa: S608
    f" text(source_ip), {STORED_EVENT} FROM audit_events WHERE tableoid = %s::regclass"
    " ORDER BY tx_id, id"
)
_SEALS = (  # the partition's seals, and those of scope '' that list some of its rows
    f"SELECT {SEAL_COLUMNS}, entries FROM audit_seals"  # noqa: S608
    " WHERE kind = 'rows' AND (scope = %s OR seq = ANY(%s)) ORDER BY seq"
)
_SPAN = (
    "SELECT min(tx_id::text::bigint), max(tx_id::text::bigint) FROM audit_events"
    " WHERE tableoid = %s::regclass"
)


def write_archive(
    conn: psycopg.Connection[Any], root: Path, name: str, lo: Any, hi: Any
) -> tuple[Path, bytes]:
    """Archive partition ``name`` under ``root``: its directory and the manifest's bytes."""
    final, partial = root / name, root / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rows = 0
    set_json_loads(orjson.loads, conn)  # metadata: the standard library's loads cost the most
    # mtime 0: the same rows make the same bytes, so an archive written again (a rerun) has
    # the manifest hash a cut may already have signed. Level 3: most of level 6's ratio on
    # these lines in much less time.
    with (
        (partial / ROWS).open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=3, mtime=0) as out,
    ):
        lines: list[bytes] = []
        for signature, tx, at, seq, epoch, address, *values in conn.cursor().stream(
            _ROWS, (name,), size=5000
        ):
            event = canonical(stored_values(values))
            lines.append(row_line(values[0], event, signature, tx, at, seq, epoch, address))
            if len(lines) == 5000:
                out.write(b"".join(lines))
                rows += len(lines)
                lines.clear()
        out.write(b"".join(lines))
        rows += len(lines)
    seqs = []
    with (partial / SEALS).open("wb") as out:
        first, last = conn.execute(_SPAN, (name,)).fetchone() or (None, None)
        span = {"p": name, "first": first, "last": last}
        legacy = (
            [seq for seq, n in conn.execute(LEGACY_SEALS, span).fetchall() if n] if first else []
        )
        for row in conn.execute(_SEALS, (name, legacy)).fetchall():
            seal = seal_of(row)
            seqs.append(seal.seq)
            out.write(seal_line(seal, bytes(row[-1])))
    manifest = orjson.dumps(
        {
            "format": FORMAT,
            "partition": name,
            "lo": lo.isoformat(),
            "hi": hi.isoformat(),
            "rows": rows,
            "seals": seqs,
            "files": {f: sha256_hex((partial / f).read_bytes()) for f in (ROWS, SEALS)},
        },
        option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2,
    )
    (partial / MANIFEST).write_bytes(manifest)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final, manifest
