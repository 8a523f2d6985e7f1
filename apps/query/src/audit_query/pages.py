"""The viewer: server-rendered HTML for people who read the log in a browser.

No script and no asset from anywhere else (it works on a network with no internet), so the
page's Content-Security-Policy can forbid every script and allow only its own stylesheet, by
hash. Every value shown comes from the log — and the log records what callers sent (user
agents, metadata) — so every value is escaped; nothing is ever marked safe.

The token is pasted once and kept in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure``
over HTTPS) that no script can read and no other site can make the browser send; each page
checks it exactly as the API checks a bearer token, and each page shown is recorded as a read.
"""

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any
from urllib.parse import urlencode

SESSION_COOKIE = "audit_session"

FILTER_FIELDS = (
    ("actor_type", "actor type", "user"),
    ("actor_id", "actor id", "alice"),
    ("action", "action", "account.update"),
    ("resource_type", "resource type", "account"),
    ("resource_id", "resource id", "acct-42"),
    ("outcome", "outcome", "success | failure | denied"),
    ("source_ip", "source IP or CIDR", "10.0.0.0/8"),
    ("request_id", "request id", ""),
    ("trace_id", "trace id", ""),
    ("since", "since (ISO 8601)", "2026-11-01T00:00:00Z"),
    ("until", "until (ISO 8601)", "2026-12-01T00:00:00Z"),
)
COLUMNS = ("occurred_at", "actor", "action", "resource", "outcome", "source_ip", "sealed")

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1f23}
h1{font-size:1.3rem}h1 a{color:inherit;text-decoration:none}
form.filters{display:grid;grid-template-columns:repeat(auto-fill,minmax(14rem,1fr));gap:.5rem}
label{display:flex;flex-direction:column;font-size:.8rem;color:#57606a}
input,select,button{font:inherit;padding:.25rem}
table{border-collapse:collapse;width:100%;margin-top:1rem}
th,td{border-bottom:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
td.id{font-family:monospace}pre{background:#f6f8fa;padding:.5rem;overflow:auto}
.error{color:#b3261e;font-weight:600}.nav{margin-top:1rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem}dt{color:#57606a}
dd{margin:0;font-family:monospace;word-break:break-all}
""".strip()
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()

HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # filters and cursors stay off other sites' logs; same-origin posts still carry an Origin
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # audit data does not stay in a shared cache or the disk
}


def _page(title: str, body: str, actor: str | None = None) -> str:
    signed_in = (
        f'<form method="post" action="/session/end">signed in as <b>{escape(actor)}</b> '
        '<button type="submit">sign out</button></form>'
        if actor
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<h1><a href="/">Audit log</a></h1>{signed_in}{body}</body></html>'
    )


def sign_in_page(error: str | None = None) -> str:
    """Where a token (scope ``audit:read``; ``audit-token --scope audit:read``) is pasted."""
    problem = f'<p class="error" id="error">{escape(error)}</p>' if error else ""
    return _page(
        "Audit log: sign in",
        f'{problem}<form method="post" action="/session">'
        "<label>Bearer token with scope audit:read"
        '<input name="token" id="token" type="password" autocomplete="off" required></label>'
        '<button type="submit" id="sign-in">Sign in</button></form>',
    )


def list_page(
    actor: str,
    given: Mapping[str, str],
    items: Iterable[dict[str, Any]] | None,
    next_cursor: str | None,
    error: str | None = None,
) -> str:
    """The filter form (as given), the matching events and a link to the next page."""
    fields = "".join(
        f'<label>{escape(label)}<input name="{name}" id="f-{name}" '
        f'value="{escape(given.get(name, ""))}" placeholder="{escape(hint)}"></label>'
        for name, label, hint in FILTER_FIELDS
    )
    limit = given.get("limit", "100")
    options = "".join(
        f"<option{' selected' if str(n) == limit else ''}>{n}</option>" for n in (25, 100, 500)
    )
    form = (
        f'<form class="filters" method="get" action="/">{fields}'
        f'<label>per page<select name="limit" id="f-limit">{options}</select></label>'
        '<button type="submit" id="search">Search</button></form>'
    )
    if error is not None:
        return _page("Audit log", f'{form}<p class="error" id="error">{escape(error)}</p>', actor)
    rows = "".join(_row(item) for item in items or ())
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    table = (
        f'<table id="events"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows or '<tr><td colspan=7>no matching events</td></tr>'}</tbody></table>"
    )
    nav = ""
    if next_cursor:
        query = urlencode({**{k: v for k, v in given.items() if v}, "cursor": next_cursor})
        nav = f'<p class="nav"><a id="next" href="/?{escape(query)}">next page</a></p>'
    return _page("Audit log", form + table + nav, actor)


def _row(item: dict[str, Any]) -> str:
    link = f'<a class="event" href="/events/{escape(str(item["id"]))}">{_time(item)}</a>'
    cells = (
        link,
        escape(f"{item['actor_type']}:{item['actor_id']}"),
        escape(item["action"]),
        escape(f"{item['resource_type']}/{item['resource_id']}"),
        escape(item["outcome"]),
        escape(item["source_ip"] or ""),
        "yes" if item["sealed"] else "not yet",
    )
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _time(item: dict[str, Any]) -> str:
    return escape(item["occurred_at"].isoformat())


def detail_page(actor: str, item: dict[str, Any], jaeger_url: str | None) -> str:
    """Every column of one event; its trace id links to Jaeger when one is configured."""
    rows = []
    for name, value in item.items():
        if name == "metadata":
            shown = f"<pre>{escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"
        elif name == "trace_id" and value and jaeger_url:
            href = f"{jaeger_url.rstrip('/')}/trace/{value}"
            shown = f'<a id="trace" href="{escape(href)}">{escape(str(value))}</a>'
        elif name == "sealed":
            shown = "yes: a seal covers it" if value else "not yet (sealed within seconds)"
        else:
            shown = escape("" if value is None else str(value))
        rows.append(f'<dt>{escape(name)}</dt><dd id="d-{escape(name)}">{shown}</dd>')
    return _page(f"Audit event {item['id']}", f'<dl id="event">{"".join(rows)}</dl>', actor)
