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
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from audit_events.authorship import READS
from audit_events.naming import ACCOUNT_ACTIONS

SESSION_COOKIE = "audit_session"

FILTER_FIELDS = (
    ("actor_id", "Who (actor id)", "alice"),
    ("actor_type", "Actor type", "user"),
    ("action", "What (action)", "account.update"),
    ("resource_id", "On what (resource id)", "acct-42"),
    ("resource_type", "Resource type", "account"),
    ("source_ip", "From (address or network)", "10.0.0.0/8"),
    ("request_id", "Request id", ""),
    ("trace_id", "Trace id", ""),
    ("since", "Since (ISO 8601, with zone)", "2026-11-01T00:00:00Z"),
    ("until", "Until (ISO 8601, with zone)", "2026-12-01T00:00:00Z"),
)
OUTCOMES = ("success", "failure", "denied")
ACTIONS = (*ACCOUNT_ACTIONS.values(), *READS, "audit.dlq.replay")  # offered; any may be typed
COLUMNS = ("Time (UTC)", "Who", "What", "On what", "Outcome", "From", "Sealed")
LIST_ATTRIBUTE = ' list="actions"'  # the action field offers the known actions
COUNT_CAP = 10_000  # beyond, "more than 10,000" (an exact count of a big log costs a scan)
LABELS = {
    "id": "Event id", "occurred_at": "When (UTC)", "recorded_at": "Recorded (UTC)",
    "actor_type": "Actor type", "actor_id": "Who", "action": "What", "resource_type":
    "Resource type", "resource_id": "On what", "outcome": "Outcome", "source_ip": "From",
    "user_agent": "User agent", "request_id": "Request id", "trace_id": "Trace id",
    "metadata": "Details", "stream_seq": "Broker sequence", "signature": "Producer signature",
    "sealed": "Sealed",
}  # fmt: skip

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1f23}
h1{font-size:1.3rem}h1 a{color:inherit;text-decoration:none}
form.filters{display:grid;grid-template-columns:repeat(auto-fill,minmax(14rem,1fr));gap:.5rem}
label{display:flex;flex-direction:column;font-size:.8rem;color:#57606a}
input,select,button{font:inherit;padding:.25rem}
table{border-collapse:collapse;width:100%;margin-top:1rem}
th,td{border-bottom:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
td.id{font-family:monospace}pre{background:#f6f8fa;padding:.5rem;overflow:auto}
.error{color:#b3261e;font-weight:600}.nav{margin-top:1rem}.help{color:#57606a;max-width:40rem}
label.check{justify-content:flex-end}.summary{margin-top:1rem;color:#57606a}
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
    """Where a token (scope ``audit:read``; ``audit-token --scope audit:read``) is pasted, with
    where one comes from."""
    problem = f'<p class="error" id="error">{escape(error)}</p>' if error else ""
    return _page(
        "Audit log: sign in",
        f'{problem}<form method="post" action="/session">'
        "<label>Your access token (it needs the scope audit:read)"
        '<input name="token" id="token" type="password" autocomplete="off" required></label>'
        '<button type="submit" id="sign-in">Sign in</button></form>'
        '<p class="help" id="where">Tokens are issued by whoever runs this service. On a'
        " deployment of this project: <code>audit-token --sub your-name --scope"
        " audit:read</code> in the API's container or pod prints one; <code>make docker-up"
        "</code> and <code>make dev</code> print a reader's token when they start. The token"
        " is kept in a cookie that no script can read, for 8 hours at most.</p>",
    )


def list_page(
    actor: str,
    given: Mapping[str, str],
    items: Iterable[dict[str, Any]] | None,
    next_cursor: str | None,
    error: str | None = None,
    total: int = 0,
    retained: datetime | None = None,
) -> str:
    """The filter form (as given), how many match, the matching events, the next page, the
    result as a download, and since when events are kept (once retention removed any)."""
    fields = "".join(
        f'<label>{escape(label)}<input name="{name}" id="f-{name}" '
        f'value="{escape(given.get(name, ""))}" placeholder="{escape(hint)}"'
        f"{LIST_ATTRIBUTE if name == 'action' else ''}></label>"
        for name, label, hint in FILTER_FIELDS
    )
    actions = "".join(f'<option value="{escape(a)}">' for a in ACTIONS)
    outcome = given.get("outcome", "")
    outcomes = '<option value="">any</option>' + "".join(
        f"<option{' selected' if o == outcome else ''}>{o}</option>" for o in OUTCOMES
    )
    limit = given.get("limit", "100")
    options = "".join(
        f"<option{' selected' if str(n) == limit else ''}>{n}</option>" for n in (25, 100, 500)
    )
    reads = " checked" if given.get("reads") else ""
    form = (
        f'<form class="filters" method="get" action="/">{fields}'
        f'<datalist id="actions">{actions}</datalist>'
        f'<label>Outcome<select name="outcome" id="f-outcome">{outcomes}</select></label>'
        f'<label>Per page<select name="limit" id="f-limit">{options}</select></label>'
        f'<label class="check"><span><input type="checkbox" name="reads" value="1" id="f-reads"'
        f"{reads}> include reads of the log (page views, exports)</span></label>"
        '<button type="submit" id="search">Search</button>'
        '<a id="clear" href="/">Clear filters</a></form>'
    )
    if error is not None:
        return _page("Audit log", f'{form}<p class="error" id="error">{escape(error)}</p>', actor)
    shown = {k: v for k, v in given.items() if v}
    rows = "".join(_row(item, shown) for item in items or ())
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    many = f"more than {COUNT_CAP:,}" if total > COUNT_CAP else f"{total:,}"
    files = urlencode({k: v for k, v in shown.items() if k != "limit"})
    summary = (
        f'<p class="summary"><span id="count">{many} matching event{"" if total == 1 else "s"}'
        f"</span> · download: "
        f'<a id="csv" href="/download?{escape(urlencode({"format": "csv"}) + "&" + files)}">'
        "CSV</a> "
        f'<a id="ndjson" href="/download?{escape(urlencode({"format": "ndjson"}) + "&" + files)}"'
        ">NDJSON</a></p>"
    )
    if retained is not None:
        summary += (
            f'<p class="summary" id="retained">Events before {_time(retained)} were removed by'
            " retention (they are in its archives).</p>"
        )
    table = (
        f'<table id="events"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows or '<tr><td colspan=7>no matching events</td></tr>'}</tbody></table>"
    )
    nav = ""
    if next_cursor:
        query = urlencode({**shown, "cursor": next_cursor})
        nav = f'<p class="nav"><a id="next" href="/?{escape(query)}">next page</a></p>'
    return _page("Audit log", form + summary + table + nav, actor)


def _row(item: dict[str, Any], shown: Mapping[str, str]) -> str:
    back = f"?{urlencode(shown)}" if shown else ""  # the detail page links back to this list
    href = f"/events/{item['id']}{back}"
    link = f'<a class="event" href="{escape(href)}">{_time(item["occurred_at"])}</a>'
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


def _time(moment: datetime) -> str:
    """One format for every time shown: to the second, in UTC, saying so."""
    return escape(moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))


def detail_page(
    actor: str, item: dict[str, Any], jaeger_url: str | None, back: Mapping[str, str]
) -> str:
    """Every column of one event; its trace id links to Jaeger when one is configured; a link
    back to the list it was opened from."""
    rows = []
    for name, value in item.items():
        if name == "metadata":
            shown = f"<pre>{escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"
        elif name == "trace_id" and value and jaeger_url:
            href = f"{jaeger_url.rstrip('/')}/trace/{value}"
            shown = f'<a id="trace" href="{escape(href)}">{escape(str(value))}</a>'
        elif name == "sealed":
            shown = "yes: a seal covers it" if value else "not yet (sealed within seconds)"
        elif isinstance(value, datetime):
            shown = _time(value)
        else:
            shown = escape("" if value is None else str(value))
        label = escape(LABELS.get(name, name))
        rows.append(f'<dt>{label}</dt><dd id="d-{escape(name)}">{shown}</dd>')
    query = urlencode({k: v for k, v in back.items() if v})
    link = f'<p class="nav"><a id="back" href="/?{escape(query)}">← back to the list</a></p>'
    body = f'{link}<dl id="event">{"".join(rows)}</dl>'
    return _page(f"Audit event {item['id']}", body, actor)
