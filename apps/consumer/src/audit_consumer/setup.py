"""``audit-setup [all|migrate|provision]``: apply migrations (``database.py``) and provision
JetStream (``jetstream.py``). Idempotent; run it before the apps, and again on every upgrade."""

import argparse
import asyncio
import logging
import sys

from audit_consumer.accounting import register_epoch
from audit_consumer.database import migrate
from audit_consumer.jetstream import provision
from audit_consumer.settings import Settings

log = logging.getLogger("audit.setup")


async def run(what: str, settings: Settings) -> None:
    """``all`` = migrate, provision, then register the durable's epoch (``accounting.py``), so
    the accounting of a new stream starts at its first sequence."""
    if what in ("all", "migrate"):
        await migrate(settings)
    if what in ("all", "provision"):
        info = await provision(settings)
        if what == "all":
            epoch = await register_epoch(settings.database_url, settings.names, info)
            log.info("epoch %d: accounting from stream sequence %d", epoch.id, epoch.first_seq)


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
