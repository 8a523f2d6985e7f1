"""JWT authentication: only valid, unexpired HS256 tokens with a usable ``sub`` pass."""

import pytest
from pydantic import ValidationError

from audit_events.auth import PUBLISHED_SECRETS, AuthError, ScopeError, authenticate, issue_token
from audit_query.settings import Settings as QuerySettings
from tests.helpers import BAD_CREDENTIALS, REASONS, SECRET, bearer


def test_valid_token_gives_the_subject() -> None:
    assert authenticate(bearer(issue_token(SECRET, "alice")), SECRET) == "alice"


def test_scheme_is_case_insensitive() -> None:
    assert authenticate("bearer " + issue_token(SECRET, "bob"), SECRET) == "bob"


@pytest.mark.parametrize(("header", "why"), BAD_CREDENTIALS)
def test_bad_credentials_are_refused(header, why: str) -> None:
    value = header() if callable(header) else header
    with pytest.raises(AuthError) as refused:
        authenticate(value, SECRET)
    assert refused.value.code == why
    assert why in REASONS


def test_a_scope_is_checked_only_when_asked_and_missing_it_is_not_a_401() -> None:
    reader = issue_token(SECRET, "auditor", scope="profile audit:read")
    assert authenticate(bearer(reader), SECRET, "audit:read") == "auditor"
    plain = issue_token(SECRET, "dave")
    assert authenticate(bearer(plain), SECRET) == "dave"  # the API asks for no scope
    for token in (plain, issue_token(SECRET, "dave", scope="audit:readx audit")):
        with pytest.raises(ScopeError) as refused:
            authenticate(bearer(token), SECRET, "audit:read")
        assert refused.value.subject == "dave"  # known, just not allowed: 403


@pytest.mark.parametrize("secret", ["", "short", *PUBLISHED_SECRETS])
def test_the_query_service_refuses_guessable_secrets_like_the_api(secret: str) -> None:
    with pytest.raises(ValidationError, match="AUDIT_JWT_SECRET"):
        QuerySettings(
            AUDIT_READER_DATABASE_URL="postgresql://reader@db/audit",
            AUDIT_JWT_SECRET=secret,
            AUDIT_EVENT_KEYS="k" * 32,
        )
