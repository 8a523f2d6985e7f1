"""``audit-setup [all|migrate|provision]``: apply migrations (``database.py``) and provision
JetStream (``jetstream.py``). Idempotent; run it before the apps, and again on every upgrade."""

import argparse
import asyncio
import logging
import sys

from audit_consumer.database import migrate
from audit_consumer.jetstream import provision
from audit_consumer.settings import Settings

log = logging.getLogger("audit.setup")


async def run(what: str, settings: Settings) -> None:
    """``all`` = migrate then provision."""
    if what in ("all", "migrate"):
        await migrate(settings)
    if what in ("all", "provision"):
        await provision(settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audit-setup", description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "migrate", "provision"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    try:
        asyncio.run(run(args.what, settings))
    except Exception as exc:
        log.error("setup failed: %s", exc)
        sys.exit(1)
