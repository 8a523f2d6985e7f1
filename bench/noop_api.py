"""The API with its publish replaced by a no-op: the benchmark's reference for what the HTTP
layer alone can do (``uvicorn --factory bench.noop_api:create_app``)."""

from fastapi import FastAPI

from audit_api.main import create_app as real_app
from audit_api.settings import Settings
from audit_events import AuditEvent


class NoopPublisher:
    ready = True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, event: AuditEvent) -> None:
        return None


def create_app() -> FastAPI:
    return real_app(Settings(), NoopPublisher())
