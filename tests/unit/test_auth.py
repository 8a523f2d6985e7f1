"""JWT authentication: only valid, unexpired HS256 tokens with a usable ``sub`` pass."""

import pytest

from audit_api.auth import AuthError, authenticate, issue_token
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
