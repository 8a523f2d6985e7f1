"""Fixtures of the integration tests beyond the session's servers (tests/conftest.py)."""

import pytest

from audit_consumer.settings import Settings as ConsumerSettings
from tests.integration.reading import reader_url


@pytest.fixture
async def reader(settings: ConsumerSettings) -> str:
    """A SELECT-only login of the query service's kind (``audit_reader``)."""
    return await reader_url(settings)
