"""The interactive API documentation (``/docs``, ``/redoc``) under the same page rules as the
viewer: a Content-Security-Policy that allows only this service's own scripts and styles and the
page's inline script by its hash (no other inline script can run), framing denied, nothing
cached. FastAPIOffline serves the Swagger/ReDoc assets from the service itself."""

import base64
import hashlib
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")
_INLINE = re.compile(rb"<script>(.*?)</script>", re.S)


def policy(page: bytes) -> str:
    """The CSP for ``page``: its inline scripts allowed by hash, everything else only from
    this origin."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE.findall(page)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline';"
        " img-src 'self' data:; connect-src 'self'; font-src 'self';"
        " frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


class DocsHeaders:
    """ASGI middleware: the page rules above, on the documentation pages only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or Request(scope).url.path not in DOC_PATHS:
            await self.app(scope, receive, send)
            return
        start: Message = {}
        body = b""

        async def buffer(message: Message) -> None:  # the pages are a few KiB, sent at once
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
            else:
                body += message.get("body", b"")

        await self.app(scope, receive, buffer)
        headers = {
            k.decode(): v.decode()
            for k, v in start.get("headers", [])
            if k.lower() != b"content-length"
        }
        headers.update(
            {
                "Content-Security-Policy": policy(body),
                "X-Frame-Options": "DENY",
                "Cache-Control": "no-store",
                "Referrer-Policy": "same-origin",
                "X-Content-Type-Options": "nosniff",
            }
        )
        response = Response(body, start.get("status", 500), headers=headers)
        await response(scope, receive, send)
