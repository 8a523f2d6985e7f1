"""The test session's configuration: paths, the secrets every server and app of this session
uses, and the environment an app process is started with. Imported by conftest files and
helpers alike (no test module imports a conftest)."""

import os
import secrets
import sys
import urllib.parse
from pathlib import Path

from audit_consumer.settings import Settings as ConsumerSettings
from audit_events.broker import IDENTITIES
from audit_events.seals import SealKey, generate_seal_key

PAST = "2026-09-01"
EMPTY_LOG = (
    "TRUNCATE audit_events, audit_seals, audit_dead_letters, audit_duplicates, audit_epochs,"  # noqa: S608 (constants only)
    " audit_hold_releases, audit_holds, audit_cut_requests RESTART IDENTITY;"
    " DO $$ DECLARE p record; BEGIN"
    "  IF EXISTS (SELECT FROM audit_partitions WHERE closed) OR EXISTS (SELECT FROM"
    "   audit_partitions a WHERE a.lo > (SELECT min(lo) FROM audit_partitions)"
    "   AND NOT EXISTS (SELECT FROM audit_partitions b WHERE b.hi = a.lo)) THEN"
    "   FOR p IN SELECT name FROM audit_partitions WHERE lo < date_trunc('day', now()) LOOP"
    "    EXECUTE format('DROP TABLE %I', p.name);"
    "   END LOOP;"
    "  END IF;"
    " END $$;"
    f" SELECT audit_partitions_prepend('{PAST}', '7 days')"
)
"""What resets the log between tests (as the owner: the append-only triggers let it through),
with partitions back to :data:`PAST` for the tests' fixed times (weekly: fewer tables). A
retention test leaves gaps (a held partition kept below removed ones) or closed partitions:
then the past is made again from scratch."""
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
ADMIN = "admin"  # the tests' own identity: recreates streams, inspects the DLQ (never shipped)
BROKER_PASSWORDS = {user: secrets.token_urlsafe(18) for user in (*IDENTITIES, ADMIN)}
"""The embedded NATS servers require these; each app process gets its own identity's."""
EVENT_KEY = secrets.token_urlsafe(32)
"""The producers' HMAC key (``AUDIT_EVENT_KEYS``) for this session."""
SEAL_KEY = generate_seal_key()
SEAL_PUBLIC_KEY = SealKey(SEAL_KEY).public_text()
# In-process apps (unit tests) read their keys from here; child processes get theirs from
# service_env(), which drops every inherited AUDIT_* variable first.
os.environ.setdefault("AUDIT_EVENT_KEYS", EVENT_KEY)
os.environ.setdefault("AUDIT_SEAL_KEY", SEAL_KEY)


def service_env(settings: ConsumerSettings, **extra: str) -> dict[str, str]:
    """Environment for an ``audit-api`` / ``audit-consumer`` child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(
        DATABASE_URL=settings.database_url,
        NATS_URL=without_credentials(settings.nats_url),
        AUDIT_JWT_SECRET=JWT_SECRET,
        AUDIT_EVENT_KEYS=EVENT_KEY,
        AUDIT_FETCH_WAIT_SECONDS=str(settings.fetch_wait_seconds),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def without_credentials(url: str) -> str:
    """``url`` (or a comma-separated list of them) without ``user:password@``: app processes
    authenticate as their own identity."""
    parts = [urllib.parse.urlsplit(u) for u in url.split(",")]
    return ",".join(p._replace(netloc=p.netloc.rpartition("@")[2]).geturl() for p in parts)


def identity_env(identity: str) -> dict[str, str]:
    """The environment that makes an app process connect to NATS as ``identity``."""
    return {"AUDIT_NATS_PASSWORD": BROKER_PASSWORDS[identity]}
