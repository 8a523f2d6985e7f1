"""``audit-keygen``: every secret a deployment needs, fresh and random, as ``NAME=value`` lines a
shell can ``eval`` or a ``.env`` file can hold. Nothing the project ships has a default secret:
``make docker-up`` writes these into ``.env`` once (and keeps them), ``make dev`` into
``.dev/secrets.env``, the Helm chart generates its own the same way.
"""

import argparse
import secrets
import string

from audit_events.broker import PASSWORD_VARS, authorization
from audit_events.naming import StreamNames

SECRETS = (
    "AUDIT_JWT_SECRET",  # signs API tokens (HS256): 48 random bytes
    *PASSWORD_VARS.values(),  # one NATS password per identity
    "POSTGRES_PASSWORD",  # the database owner (migrations, setup only)
    "AUDIT_WRITER_PASSWORD",  # the consumers' audit_consumer login
)


def secret(nbytes: int) -> str:
    """``nbytes`` random bytes, URL- and shell-safe (``[A-Za-z0-9_-]``), starting with a letter:
    nats-server reads a ``$VAR`` password as a config value, and one starting with a digit or
    ``-`` would be parsed as a number (the server then refuses its config)."""
    return secrets.choice(string.ascii_letters) + secrets.token_urlsafe(nbytes)


def generate(names: tuple[str, ...] = SECRETS) -> dict[str, str]:
    """A new random value for each name."""
    return {name: secret(48 if name == "AUDIT_JWT_SECRET" else 24) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(prog="audit-keygen", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=SECRETS, help="just these (default: all)")
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
    for name, value in generate(tuple(args.only or SECRETS)).items():
        print(f"{name}={value}")
