"""Client text made recordable, the same way in every service that records requests.

Every string that comes from a client (a path, a user agent, a request id) has its control
characters and lone surrogates replaced by U+FFFD (never deleted: that would turn ``acc%00-1``
into ``acc-1``) and is cut to the model's limits, so an event a producer had acknowledged can
always be stored: PostgreSQL refuses NUL in text and jsonb. Headers are read as UTF-8 when they
are (the server hands them over as latin-1), so a non-ASCII user agent is kept whole.
"""

import unicodedata

from starlette.requests import Request

UNPRINTABLE = ("Cc", "Cs")  # control characters, lone surrogates
MAX_PATH_CHARS = 512  # of a path recorded in metadata (the model does not bound metadata)


def clean(text: str | None, limit: int) -> str | None:
    """``text`` with unprintable characters replaced by U+FFFD, at most ``limit`` characters;
    ``None`` if empty."""
    if not text:
        return None
    if not text.isprintable() and any(unicodedata.category(ch) in UNPRINTABLE for ch in text):
        text = "".join("\ufffd" if unicodedata.category(ch) in UNPRINTABLE else ch for ch in text)
    return text[:limit]


def header(request: Request, name: str) -> str | None:
    """A header's value as UTF-8 when its bytes are UTF-8, else as latin-1 (HTTP's default)."""
    value = request.headers.get(name)
    if value is None or value.isascii():
        return value
    raw = value.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return value


def peer(request: Request) -> str | None:
    """The client's address as given: the TCP peer, or a trusted proxy's ``X-Forwarded-For``
    (uvicorn's ``forwarded_allow_ips``). The event model canonicalizes it."""
    return request.client.host if request.client else None
