"""``audit-verify --archive LOCATION``: check archives (``audit_events/archives.py``) with no
database, public keys only. ``LOCATION`` is one partition's directory or a directory of them.

Each archive: its files hash to what the manifest says; its seals are signed by a trusted key
and their entries hash to their ``rows_digest``; every row line recomputes to an entry of its
partition's seals (altered, inserted and deleted lines named like rows); the cut is signed, is
the partition's, and signs this manifest, these seals and this many rows.
"""

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import orjson

from audit_events.archives import CUT, MANIFEST, ROWS, SEALS, entry, seal_from, sha256_hex
from audit_events.cuts import Cut
from audit_events.seals import AUTHORED, UNSIGNED, SealKeys, entries
from audit_verify.report import Report


def check_archives(location: Path, keys: SealKeys) -> Report:
    """Every archive under ``location``; raises OSError when there is none."""
    dirs = [location] if (location / MANIFEST).exists() else sorted(
        p.parent for p in location.glob(f"*/{MANIFEST}"))  # fmt: skip
    if not dirs:
        raise OSError(f"no archive ({MANIFEST}) in {location}")
    report = Report()
    for path in dirs:
        report.add(check_archive(path, keys))
        report.seals += 1
    report.cuts = len(dirs)
    return report


def check_archive(path: Path, keys: SealKeys, with_cut: bool = True) -> Report:
    """One partition's archive (``with_cut=False``: before its cut exists, as retention
    checks what it wrote before asking for the cut)."""
    report = Report()
    found = report.findings.append
    name = path.name
    raw = (path / MANIFEST).read_bytes()
    manifest = orjson.loads(raw)
    for file, digest in manifest["files"].items():
        if not (path / file).exists() or sha256_hex((path / file).read_bytes()) != digest:
            found(f"archive {name}: {file} differs from the manifest")
    expected: dict[str, tuple[int, bytes, int, int]] = {}  # id -> flag, hash, seal, version
    seals, shared = [], set[int]()  # shared: scope-'' seals, which list other rows too
    for line in _lines((path / SEALS).read_bytes()):
        seal, blob = seal_from(orjson.loads(line))
        seals.append(seal.seq)
        if why := keys.check(seal):
            found(f"archive {name}: seal #{seal.seq}: {why}")
        if hashlib.sha256(blob).digest() != seal.rows_digest or seal.scope not in (name, ""):
            found(f"archive {name}: seal #{seal.seq}: its list of rows was changed")
        for flag, key, digest in entries(blob):
            if seal.scope or flag in (AUTHORED, UNSIGNED):
                expected[key.hex] = (flag, digest, seal.seq, seal.version)
        shared |= {seal.seq} if not seal.scope else set()
    rows = 0
    for line in _lines(gzip.decompress((path / ROWS).read_bytes())):
        rows += 1
        values = orjson.loads(line)
        sealed = expected.pop(values["id"].replace("-", ""), None)
        if sealed is None:
            found(f"archive {name}: row {values['id']}: inserted (in no seal of the archive)")
        elif entry(values, sealed[3])[::2] != (sealed[0], sealed[1]):
            found(f"archive {name}: row {values['id']}: altered (differs from seal #{sealed[2]})")
    for hexed, (_, _, seq, _) in expected.items():
        if seq not in shared:  # (a line dropped from those changes the count the cut signed)
            found(f"archive {name}: row {UUID(hexed)}: deleted (sealed in seal #{seq})")
    report.rows = rows
    if with_cut:
        _check_cut(path, keys, raw, seals, rows, report)
    return report


def _check_cut(path: Path, keys: SealKeys, manifest: bytes, seals: list[int], rows: int,
               report: Report) -> None:  # fmt: skip
    name, found = path.name, report.findings.append
    if not (path / CUT).exists():
        found(f"archive {name}: no cut (the retention run did not finish: run it again)")
        return
    cut_seal, _ = seal_from(orjson.loads((path / CUT).read_bytes()))
    if why := keys.check(cut_seal):
        found(f"archive {name}: the cut (seal #{cut_seal.seq}): {why}")
        return
    try:
        cut = Cut.parse(cut_seal.body)
    except ValueError as exc:
        found(f"archive {name}: the cut: {exc}")
        return
    if cut_seal.kind != "cut" or cut.partition != name or cut_seal.scope != name:
        found(f"archive {name}: the cut is not this partition's")
    if cut.manifest_sha256 != sha256_hex(manifest):
        found(f"archive {name}: the manifest differs from the one the cut signed")
    if sorted([*cut.seals, *cut.legacy]) != sorted(seals) or cut.rows != rows:
        found(f"archive {name}: the cut names {len(cut.seals)} seals and {cut.rows} rows,"
              f" the archive holds {len(seals)} and {rows}")  # fmt: skip


def _lines(data: bytes) -> Iterator[bytes]:
    return (line for line in data.splitlines() if line.strip())
