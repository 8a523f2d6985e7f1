"""Fixtures of the integration tests beyond the session's servers (tests/conftest.py)."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from audit_consumer.settings import Settings as ConsumerSettings
from tests.integration.reading import query_settings, reader_url, serving


@pytest.fixture
async def reader(settings: ConsumerSettings) -> str:
    """A SELECT-only login of the query service's kind (``audit_reader``)."""
    return await reader_url(settings)


@pytest.fixture
async def client(
    db: Any, settings: ConsumerSettings, streams: ConsumerSettings
) -> AsyncIterator[httpx.AsyncClient]:
    """The query service in process (its real lifespan), reading through its own login."""
    async with serving(query_settings(await reader_url(settings), streams)) as http:
        yield http
