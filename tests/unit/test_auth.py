"""JWT authentication: only valid, unexpired HS256 tokens with a usable ``sub`` pass."""

import pytest
from pydantic import ValidationError

from audit_events.auth import PUBLISHED_SECRETS, AuthError, ScopeError, authenticate, issue_token
from audit_events.folding import source_key
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
    spaced = issue_token(SECRET, "dave", scope="profile\u00a0audit:read")  # no-break space
    for token in (plain, issue_token(SECRET, "dave", scope="audit:readx audit"), spaced):
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


def test_a_token_living_longer_than_allowed_is_refused() -> None:
    """An ``exp`` in the year 10^11 was accepted: a leaked token lived for ever."""
    day = issue_token(SECRET, "eve", ttl_seconds=23 * 3600)
    assert authenticate(bearer(day), SECRET) == "eve"
    long = issue_token(SECRET, "eve", ttl_seconds=30 * 24 * 3600)
    with pytest.raises(AuthError, match="token_lifetime"):
        authenticate(bearer(long), SECRET)
    assert authenticate(bearer(long), SECRET, max_lifetime=31 * 24 * 3600) == "eve"


def test_denials_from_one_ipv6_network_share_a_budget() -> None:
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("203.0.113.7") == "203.0.113.7"
    assert source_key("2001:db8::1", 128) == "2001:db8::1/128"
