"""JWT bearer authentication: HS256 only, ``sub`` is the actor, ``exp`` is required.

Pinning ``algorithms=["HS256"]`` is what rejects ``alg: none`` and HS/RS confusion; PyJWT
checks the signature and expiry. A subject with control characters or lone surrogates is
refused so that an actor id can always be encoded, stored (PostgreSQL rejects NUL) and printed.
A refusal carries a fixed reason code, never a library's message: PyJWT checks some headers
(``crit``) before the signature and quotes them, so its messages can carry attacker text.
"""

import argparse
import os
import time
import unicodedata

import jwt
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from audit_events import MAX_ID_CHARS

PUBLISHED_SECRETS = {"dev-only-secret-change-me-0123456789abcdef"}
"""Secrets earlier versions shipped in examples: public knowledge, refused."""
MAX_TOKEN_BYTES = 8192
MAX_SUBJECT_CHARS = MAX_ID_CHARS  # the subject is the event's actor_id


class AuthError(Exception):
    """The request is not authenticated; ``code`` says why, from a fixed set (it is recorded in
    the denied event, never sent back)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# PyJWT's errors by their class, most specific first; anything else is "invalid_token".
JWT_REASONS: list[tuple[type[jwt.PyJWTError], str]] = [
    (jwt.ExpiredSignatureError, "token_expired"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.DecodeError, "malformed_token"),
]


def check_secret(secret: str) -> None:
    """ValueError unless ``secret`` can sign tokens: an audit trail is only as good as its actor
    ids, so empty, short and published secrets are refused (every process that checks tokens)."""
    if not secret:
        raise ValueError(
            "AUDIT_JWT_SECRET is empty: set a random secret of 32+ bytes (audit-keygen)"
        )
    if len(secret.encode()) < 32 or secret in PUBLISHED_SECRETS:
        raise ValueError(
            "AUDIT_JWT_SECRET is shorter than 32 bytes or a published example;"
            " generate one with audit-keygen"
        )


MAX_LIFETIME_SECONDS = 24 * 3600


def authenticate(
    authorization: str | None,
    secret: str,
    scope: str | None = None,
    max_lifetime: float = MAX_LIFETIME_SECONDS,
) -> str:
    """The actor (``sub``) of a valid ``Authorization: Bearer <jwt>``, else :class:`AuthError`;
    with ``scope``, the token's ``scope`` claim (space-separated, RFC 8693 style) must hold it,
    else ``AuthError("missing_scope")`` (a 403, not a 401: the caller is known)."""
    if not authorization:
        raise AuthError("missing_token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError("not_bearer")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError("token_too_large")
    try:
        claims = jwt.decode(
            token.strip(), secret, algorithms=["HS256"], options={"require": ["sub", "exp"]}
        )
    except jwt.PyJWTError as exc:
        code = next((c for kind, c in JWT_REASONS if isinstance(exc, kind)), "invalid_token")
        raise AuthError(code) from None
    subject = claims["sub"]
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_CHARS:
        raise AuthError("bad_subject")
    if not subject.isprintable() and any(unicodedata.category(c) in ("Cc", "Cs") for c in subject):
        raise AuthError("bad_subject")  # control characters, lone surrogates
    if claims["exp"] - time.time() > max_lifetime:  # a leaked token must not live for ever
        raise AuthError("token_lifetime")
    granted = claims.get("scope")  # space-separated (RFC 8693): not any Unicode white space
    if scope is not None and not (isinstance(granted, str) and scope in granted.split(" ")):
        raise ScopeError(subject)
    return subject


class TokenSettings(BaseSettings):
    """How a service checks tokens: the issuer's secret (refused when guessable) and the longest
    lifetime a token may still have (``exp`` further ahead: refused)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    jwt_secret: str = Field("", alias="AUDIT_JWT_SECRET", repr=False)
    jwt_max_lifetime_seconds: float = Field(
        MAX_LIFETIME_SECONDS, gt=0, alias="AUDIT_JWT_MAX_LIFETIME_SECONDS"
    )

    @model_validator(mode="after")
    def _secret_is_real(self) -> "TokenSettings":
        check_secret(self.jwt_secret)
        return self


class ScopeError(AuthError):
    """Authenticated as ``subject``, but the token lacks the scope asked for."""

    def __init__(self, subject: str) -> None:
        super().__init__("missing_scope")
        self.subject = subject


def issue_token(
    secret: str, subject: str, ttl_seconds: int = 12 * 3600, scope: str | None = None
) -> str:
    """A signed HS256 token, for development and tests (``audit-token``)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "iat": now, "exp": now + ttl_seconds}
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, secret, "HS256")


def token_main() -> None:
    """``audit-token [--sub NAME] [--ttl SECONDS] [--scope S]``: print a token signed with
    AUDIT_JWT_SECRET (``--scope audit:read`` for the query service)."""
    parser = argparse.ArgumentParser(prog="audit-token", description=token_main.__doc__)
    parser.add_argument("--sub", default="dev-user")
    parser.add_argument("--ttl", type=int, default=12 * 3600)
    parser.add_argument("--scope", help="space-separated scopes, e.g. audit:read")
    args = parser.parse_args()
    secret = os.environ.get("AUDIT_JWT_SECRET")
    if not secret:
        raise SystemExit("AUDIT_JWT_SECRET is not set")
    print(issue_token(secret, args.sub, args.ttl, args.scope))
