"""``audit-keygen``: every secret a deployment needs, fresh and random, as ``NAME=value`` lines a
shell can ``eval`` or a ``.env`` file can hold. Nothing the project ships has a default secret:
``make docker-up`` writes these into ``.env`` once (and keeps them), ``make dev`` into
``.dev/secrets.env``, the Helm chart generates its own the same way.

Which process gets which (README, "Integrity"): ``AUDIT_EVENT_KEYS`` the API (it signs),
``AUDIT_QUERY_EVENT_KEY`` audit-query, ``AUDIT_DLQ_EVENT_KEY`` audit-dlq and
``AUDIT_RETENTION_EVENT_KEY`` audit-retention (each signs the records it makes), all of them the
consumers and ``audit-verify`` (they check); ``AUDIT_SEAL_KEY``
the consumers only;
``AUDIT_SEAL_PUBLIC_KEYS`` (printed with it, not a secret) ``audit-verify``, and a copy kept
wherever you keep things that must outlive the database.
"""

import argparse
import re
import secrets
import string
import sys

from audit_events.broker import PASSWORD_VARS, authorization
from audit_events.naming import StreamNames
from audit_events.seals import SealKey, generate_seal_key

SECRETS = (
    "AUDIT_JWT_SECRET",  # signs API tokens (HS256): 48 random bytes
    *PASSWORD_VARS.values(),  # one NATS password per identity
    "AUDIT_NATS_ROUTE_PASSWORD",  # NATS cluster routes (compose profile `cluster`)
    "POSTGRES_PASSWORD",  # the database owner (migrations, setup only)
    "AUDIT_WRITER_PASSWORD",  # the consumers' audit_consumer login
    "AUDIT_READER_PASSWORD",  # audit-verify's read-only login
    "AUDIT_QUERY_READER_PASSWORD",  # audit-query's read-only login
    "AUDIT_EVENT_KEYS",  # the API signs events with it (HMAC), consumers check
    "AUDIT_QUERY_EVENT_KEY",  # audit-query signs the records of reads
    "AUDIT_DLQ_EVENT_KEY",  # audit-dlq signs the records of replays
    "AUDIT_RETENTION_EVENT_KEY",  # audit-retention signs the records of removals and holds
    "AUDIT_SEAL_KEY",  # consumers sign seals with it (Ed25519 private key)
)
PUBLIC = {"AUDIT_SEAL_KEY": "AUDIT_SEAL_PUBLIC_KEYS"}
"""Printed beside the secret they derive from: what ``audit-verify`` checks seals with."""


def secret(nbytes: int) -> str:
    """``nbytes`` random bytes, URL- and shell-safe (``[A-Za-z0-9_-]``), starting with a letter:
    nats-server reads a ``$VAR`` password as a config value, and one starting with a digit or
    ``-`` would be parsed as a number (the server then refuses its config)."""
    return secrets.choice(string.ascii_letters) + secrets.token_urlsafe(nbytes)


def generate(names: tuple[str, ...] = SECRETS) -> dict[str, str]:
    """A new random value for each name (and the public key of a new sealing key)."""
    out: dict[str, str] = {}
    for name in names:
        if name == "AUDIT_SEAL_KEY":
            out[name] = generate_seal_key()
            out[PUBLIC[name]] = SealKey(out[name]).public_text()
        else:
            out[name] = secret(48 if name == "AUDIT_JWT_SECRET" else 32)
    return out


def missing(existing: str) -> dict[str, str]:
    """What an existing ``.env`` lacks (a deployment made before a secret existed): new values
    for absent secrets, and a public key derived from a sealing key it already has."""
    present = dict(re.findall(r"^([A-Z_]+)=(.*)$", existing, re.MULTILINE))
    out = generate(tuple(n for n in SECRETS if not present.get(n)))
    for private, public in PUBLIC.items():
        if present.get(private) and not present.get(public):
            out[public] = SealKey(present[private]).public_text()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="audit-keygen", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=SECRETS, help="just these (default: all)")
    parser.add_argument(
        "--missing",
        action="store_true",
        help="read an existing env file on stdin, print only what it lacks (upgrades)",
    )
    parser.add_argument(
        "--nats-authorization",
        action="store_true",
        help="print instead the NATS server's users and permissions for these stream names"
        " (AUDIT_STREAM...), passwords as $AUDIT_NATS_*_PASSWORD references to its environment",
    )
    args = parser.parse_args()
    if args.nats_authorization:
        refs = {identity: f"${var}" for identity, var in PASSWORD_VARS.items()}
        print(authorization(refs, StreamNames()), end="")
        return
    values = missing(sys.stdin.read()) if args.missing else generate(tuple(args.only or SECRETS))
    for name, value in values.items():
        print(f"{name}={value}")
