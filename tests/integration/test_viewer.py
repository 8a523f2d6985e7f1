"""The viewer at ``/``: in a real browser (Debian's chromium through its chromium-driver, by
explicit path: nothing is downloaded) against a real ``audit-query`` process, PostgreSQL and
NATS — sign in, filter, page, open an event — and its defences over plain HTTP."""

import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from audit_consumer.settings import Settings as ConsumerSettings
from audit_events.auth import issue_token
from audit_query.main import create_app
from tests.env import JWT_SECRET, service_env
from tests.integration.reading import READ, event, reader_url, records, serving
from tests.integration.reading import query_settings as settings_for
from tests.integration.reading import store as store_events
from tests.processes import Service, query

JAEGER = "http://jaeger.example:16686"
HOSTILE = '<script>alert("xss")</script><img src=x onerror=alert(1)>'


def browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are required in CI (.ci/run installs them)")
        pytest.skip("no browser (apt install chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    binary, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    service = webdriver.ChromeService(executable_path=driver, log_output=str(tmp_path / "cd.log"))
    chrome = webdriver.Chrome(options=options, service=service)
    chrome.set_page_load_timeout(60)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
async def viewer(
    db: Any, settings: ConsumerSettings, streams: ConsumerSettings, tmp_path: Path
) -> AsyncIterator[Service]:
    env = service_env(streams, AUDIT_JAEGER_URL=JAEGER)
    server = query(env, tmp_path, await reader_url(settings)).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def follow(chrome: webdriver.Chrome, element: WebElement) -> None:
    """Click, and wait until the page it leads to has replaced this one (and loaded)."""
    chrome.execute_script("document.documentElement.dataset.left = 'yes'")
    element.click()
    WebDriverWait(chrome, 30, ignored_exceptions=[WebDriverException]).until(
        lambda c: c.execute_script(
            "return !document.documentElement.dataset.left && document.readyState == 'complete'"
        )
    )


def ids_shown(chrome: webdriver.Chrome) -> list[str]:
    links = chrome.find_elements(By.CSS_SELECTOR, "#events a.event")
    return [str(link.get_attribute("href")).rsplit("/", 1)[1].split("?")[0] for link in links]


async def test_sign_in_filter_page_and_open_an_event_in_a_real_browser(
    db: Any, viewer: Service, browser: webdriver.Chrome, streams: ConsumerSettings, nc: Any
) -> None:
    events = [event(i) for i in range(90)]
    events[87] = event(87, trace_id="ab" * 16, user_agent=HOSTILE, metadata={"note": HOSTILE})
    await store_events(db, events)
    base = f"http://127.0.0.1:{viewer.port}"

    browser.get(base + "/")
    assert "audit-token" in browser.find_element(By.ID, "where").text  # where tokens come from
    browser.find_element(By.ID, "token").send_keys(
        issue_token(JWT_SECRET, "auditor", scope="audit:read")
    )
    follow(browser, browser.find_element(By.ID, "sign-in"))
    assert "signed in as auditor" in browser.find_element(By.TAG_NAME, "body").text

    # filter: user-0's events (every third: 30), 25 a page, newest first
    browser.find_element(By.ID, "f-actor_id").send_keys("user-0")
    Select(browser.find_element(By.ID, "f-limit")).select_by_visible_text("25")
    follow(browser, browser.find_element(By.ID, "search"))
    first = ids_shown(browser)
    matching = [str(e.id) for e in reversed(events) if e.actor_id == "user-0"]
    assert first == matching[:25]
    assert browser.find_element(By.ID, "count").text == "30 matching events"
    headings = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#events th")]
    assert headings[:3] == ["Time (UTC)", "Who", "What"]
    assert browser.find_element(By.CSS_SELECTOR, "#events a.event").text.endswith(" UTC")
    csv_link = browser.find_element(By.ID, "csv").get_attribute("href")
    assert "format=csv" in str(csv_link)
    assert "actor_id=user-0" in str(csv_link)

    follow(
        browser, browser.find_element(By.ID, "next")
    )  # the cursor, the filter and the limit kept
    assert ids_shown(browser) == matching[25:]
    assert not browser.find_elements(By.ID, "next")  # the end

    # open the event with the hostile user agent: shown as text, run nowhere
    browser.get(base + "/?actor_id=user-0&limit=100")
    follow(browser, browser.find_element(By.CSS_SELECTOR, f'a[href^="/events/{events[87].id}"]'))
    assert browser.find_element(By.ID, "d-id").text == str(events[87].id)
    assert browser.find_element(By.ID, "d-user_agent").text == HOSTILE
    assert json.loads(browser.find_element(By.ID, "d-metadata").text) == {"note": HOSTILE}
    trace = browser.find_element(By.ID, "trace")
    assert trace.get_attribute("href") == f"{JAEGER}/trace/{'ab' * 16}"
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert browser.find_element(By.ID, "d-occurred_at").text.endswith(" UTC")
    follow(browser, browser.find_element(By.ID, "back"))  # back to the list it came from
    assert browser.find_element(By.ID, "f-actor_id").get_attribute("value") == "user-0"
    follow(browser, browser.find_element(By.ID, "clear"))
    assert browser.find_element(By.ID, "f-actor_id").get_attribute("value") == ""

    # a bad filter: the page says which, with what was typed kept
    browser.get(base + "/?since=yesterday")
    assert "since" in browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "f-since").get_attribute("value") == "yesterday"

    # the pages shown are on the record, as the API's reads are
    viewed = [
        body for body, _, _ in await records(nc, streams.names) if body["actor_id"] == "auditor"
    ]
    assert [(b["action"], b["metadata"].get("via")) for b in viewed] == [
        ("audit.query", "viewer"),  # the empty first page after signing in
        ("audit.query", "viewer"),
        ("audit.query", "viewer"),
        ("audit.query", "viewer"),
        ("audit.read", "viewer"),
        ("audit.query", "viewer"),  # back to the list
        ("audit.query", "viewer"),  # filters cleared
    ]

    follow(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/session/end'] button"))
    assert browser.find_elements(By.ID, "token")  # signed out: the sign-in form again

    # /docs: Swagger UI from the service's own assets (every other host is unresolvable here),
    # with "Authorize" for the bearer token and the read operations listed
    browser.get(base + "/docs")
    WebDriverWait(browser, 30).until(lambda c: c.find_elements(By.CSS_SELECTOR, ".btn.authorize"))
    assert "/audit-events/feed" in browser.find_element(By.TAG_NAME, "body").text


async def test_the_viewer_keeps_its_token_from_scripts_and_other_sites(
    db: Any, settings: ConsumerSettings, streams: ConsumerSettings
) -> None:
    """And (in the same signed-in client) hides the reader's own reads, and downloads."""
    config = settings_for(await reader_url(settings), streams)
    token = READ["Authorization"].removeprefix("Bearer ")
    async with serving(config) as http:
        signed_in = await http.post("/session", data={"token": token})
        assert signed_in.status_code == 303
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie

        page = await http.get("/")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script" not in policy
        assert page.headers["cache-control"] == "no-store"

        evil = {"Origin": "https://evil.example"}
        other_site = await http.post("/session", data={"token": token}, headers=evil)
        assert other_site.status_code == 403
        assert (await http.post("/session/end", headers=evil)).status_code == 403
        no_scope = await http.post("/session", data={"token": issue_token(JWT_SECRET, "bob")})
        assert no_scope.status_code == 403
        assert "lacks scope" in no_scope.text
        garbage = await http.post("/session", data={"token": "not-a-jwt"})
        assert garbage.status_code == 401

        # The reader's own reads are left out unless asked for; the result downloads as a
        # file, through the same recorded, bounded export as the API's.
        await store_events(db, [event(i) for i in range(3)])
        await store_events(db, [event(i, action="audit.query") for i in range(10, 12)])
        assert (await http.get("/")).text.count('class="event"') == 3
        assert (await http.get("/", params={"reads": "1"})).text.count('class="event"') == 5
        assert (await http.get("/", params={"action": "audit.query"})).text.count(
            'class="event"'
        ) == 2  # asked for by action: shown
        download = await http.get("/download", params={"format": "csv"})
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("text/csv")
        assert len(download.text.strip().splitlines()) == 1 + 3  # a header, the 3 events

    async with serving(config) as http:  # a new client: no cookie, only the sign-in form
        anonymous = await http.get("/")
        assert anonymous.status_code == 200
        assert 'id="token"' in anonymous.text
        assert "no matching events" not in anonymous.text
        assert (await http.get("/events/" + "0" * 32)).status_code == 401


def test_openapi_declares_the_bearer_scheme_for_docs(streams: ConsumerSettings) -> None:
    """``/docs`` has "Authorize": every read operation names the bearer scheme."""
    spec = create_app(settings_for("postgresql://unused@127.0.0.1/x", streams)).openapi()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in ("/audit-events", "/audit-events/feed", "/audit-events/export"):
        assert spec["paths"][path]["get"]["security"] == [{"HTTPBearer": []}]
    assert "/" not in spec["paths"]  # the viewer is not part of the API
