"""``audit-consumer``: one worker on the shared durable, with its probe server.

SIGTERM/SIGINT: stop fetching, finish and ack the batch in hand (and what the last pull
request still delivers), flush the acks to the server and close the connection, exit 0. A
second signal, or ``AUDIT_SHUTDOWN_SECONDS`` passing, does not lose anything either: unacked
messages are simply redelivered to another worker.
"""

import asyncio
import gc
import logging
import signal

from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

from audit_consumer.consumer import Consumer
from audit_consumer.health import HealthServer
from audit_consumer.settings import Settings
from audit_events import tracing

log = logging.getLogger("audit.consumer")


async def serve(settings: Settings) -> None:
    consumer = Consumer(settings)
    health = HealthServer(consumer, settings.health_host, settings.health_port)
    await health.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    run = asyncio.create_task(consumer.run())
    stop = asyncio.create_task(consumer.stop_requested())
    await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    try:
        await asyncio.wait_for(run, settings.shutdown_seconds)
    except TimeoutError:
        log.warning(
            "shutdown took longer than %ss; unacked messages will be redelivered",
            settings.shutdown_seconds,
        )
    finally:
        await health.stop()
    log.info("stopped: %s", consumer.stats)


def main() -> None:
    tracing.configure_logging("audit-consumer")
    if tracing.init_tracing("audit-consumer"):
        PsycopgInstrumentor().instrument(enable_commenter=False)
    settings = Settings()
    settings.require_keys()
    # Everything allocated so far lives as long as the process: keep it out of every garbage
    # collection (the consumer allocates tens of objects per event; full collections would
    # otherwise walk the whole heap again and again).
    gc.freeze()
    try:
        import uvloop

        uvloop.run(serve(settings))
    except ImportError:  # pragma: no cover - Windows
        asyncio.run(serve(settings))
