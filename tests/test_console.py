"""The operator console in a real browser (Debian's Chromium driven by Playwright) against a
real `tollway serve` with a SQLite store, an owner, a team admin and a viewer, and the fake
OpenAI upstream; traffic comes from the official openai SDK.

Logging in (and being refused), Overview showing this traffic after the next 10 s sample,
Spend and its CSV export, Requests and a request's detail, Routing and the redacted config,
making a key (shown once, copied), using it, revoking it (the SDK then gets 401), the audit
trail of both; a team admin sees its team only, a viewer gets no write action; the phone
layout's Menu. Throughout: the CSP header, no request to any host but the gateway, and the
credential nowhere but in memory. A screenshot of each page goes to tests/artifacts/console/.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import ADMIN_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "console"
LEAD_KEY = "sk-tollway-search-lead-admin-000000"
VIEWER_KEY = "sk-tollway-finance-viewer-0000000"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _need_browser() -> Any:
    """The Playwright module, or a skip saying why (a failure when TOLLWAY_REQUIRE_BROWSER is set)."""
    required = bool(os.environ.get("TOLLWAY_REQUIRE_BROWSER"))
    why = None
    if not os.path.exists(CHROMIUM):
        why = f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    else:
        try:
            from playwright import sync_api
        except ImportError:
            why = "the playwright package is not installed (pip install -e '.[test]')"
    if why is not None:
        if required:
            pytest.fail(f"TOLLWAY_REQUIRE_BROWSER is set but {why}")
        pytest.skip(why)
    return sync_api


def _config(upstream: str, db: Path) -> str:
    return f"""
providers: [{{name: up, schema: openai, base_url: {upstream}, api_key: {UPSTREAM_SECRET}}}]
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up}}]}}
  - {{name: gpt-4o, targets: [{{provider: up}}]}}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}", team: search, budget: {{usd: 5, period: month}}}}
teams: [{{name: search}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
admins:
  - {{name: search-lead, key_hash: "{key_hash(LEAD_KEY)}", role: team_admin, team: search}}
  - {{name: finance, key_hash: "{key_hash(VIEWER_KEY)}", role: viewer}}
store: {{backend: sqlite, path: {db}}}
ledger: {{flush_interval: 0.05}}
"""


@pytest.fixture(scope="module")
def sync_api() -> Any:
    return _need_browser()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(sync_api: Any, upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(_config(upstream.url, tmp_path_factory.mktemp("console") / "tollway.db"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    print(f"\nconsole screenshots: {ARTIFACTS}")
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser(sync_api: Any) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


class Watched:
    """A page whose every request, console error and page error is recorded."""

    def __init__(self, browser: Any, gw: GatewayProcess, **context: Any) -> None:
        self.context = browser.new_context(viewport=context.pop("viewport", {"width": 1280, "height": 900}),
                                           accept_downloads=True, **context)
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gw.url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.gw = gw

    def check(self, credential: str) -> None:
        """Only the gateway was asked for anything; the credential is in no URL, storage or cookie."""
        origin = self.gw.url + "/"
        strays = [u for u in self.requests if not (u.startswith(origin) or u.startswith(f"blob:{self.gw.url}/")
                                                  or u.startswith("data:"))]
        assert not strays, strays
        assert not [u for u in self.requests if credential in u]
        assert credential not in self.page.url
        stored = self.page.evaluate("""() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage),
                                      document.cookie, location.href, history.length])""")
        assert credential not in stored
        assert not self.context.cookies()
        assert not [e for e in self.errors if "Content Security Policy" in e or "Refused" in e], self.errors

    def close(self) -> None:
        self.context.close()


def login(w: Watched, credential: str) -> None:
    page = w.page
    page.goto(w.gw.url + "/ui")
    page.get_by_label("Admin credential").fill(credential)
    page.get_by_role("button", name="Log in").click()
    page.locator("#shell").wait_for()  # (Log out is in the nav: behind the Menu button on a phone)


def go(w: Watched, name: str) -> None:
    w.page.get_by_role("navigation").get_by_role("link", name=name, exact=True).click()
    w.page.get_by_role("heading", name=name, level=1).wait_for()


def chat(gw: GatewayProcess, key: str, stream: bool = False) -> int:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)
    try:
        if stream:
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                    stream=True, stream_options={"include_usage": True}):
                pass
        else:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code


def admin(gw: GatewayProcess, method: str, path: str, body: object = None, token: str = ADMIN_KEY) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(gw.url + path, data=data, method=method,
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def number(text: str) -> float:
    cleaned = re.sub(r"[^0-9.]", "", text)
    return float(cleaned) if cleaned else 0.0


def test_the_ui_answer_carries_the_csp(gw: GatewayProcess):
    with urllib.request.urlopen(gw.url + "/ui") as r:
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-frame-options"] == "DENY"


def test_a_wrong_credential_is_refused_on_the_form(browser: Any, gw: GatewayProcess, artifacts: Path):
    w = Watched(browser, gw)
    try:
        page = w.page
        page.goto(gw.url + "/ui")
        page.get_by_label("Admin credential").fill("sk-not-an-admin-credential-000")
        page.get_by_role("button", name="Log in").click()
        error = page.locator("#login-error")
        error.wait_for()
        assert "admin credential" in error.inner_text()
        assert page.get_by_label("Admin credential").is_visible(), "still on the form"
        assert not page.locator("#shell").is_visible()
        page.screenshot(path=str(artifacts / "login-refused.png"))
        w.check("sk-not-an-admin-credential-000")
        assert chat(gw, TEST_KEY) == 200, "a gateway key is no admin credential either"
        page.get_by_label("Admin credential").fill(TEST_KEY)
        page.get_by_role("button", name="Log in").click()
        page.locator("#login-error").wait_for()
        assert not page.locator("#shell").is_visible()
    finally:
        w.close()


def test_the_owner_console_end_to_end(browser: Any, gw: GatewayProcess, artifacts: Path):
    w = Watched(browser, gw)
    page = w.page
    try:
        page.goto(gw.url + "/ui")
        page.screenshot(path=str(artifacts / "login.png"))
        login(w, ADMIN_KEY)
        assert "admin (owner)" in page.locator("#who").inner_text()
        nav = page.get_by_role("navigation")
        for name in ("Overview", "Spend", "Requests", "Routing", "Keys", "Audit"):
            assert nav.get_by_role("link", name=name, exact=True).is_visible()
        assert nav.get_by_role("button", name="Log out").is_visible()

        # Overview: this traffic appears after the next sample (every 10 s; the page polls every 10 s).
        assert chat(gw, TEST_KEY) == 200 and chat(gw, TEST_KEY, stream=True) == 200
        stop = threading.Event()

        def trickle() -> None:  # traffic in every interval until the page shows it
            while not stop.is_set():
                chat(gw, TEST_KEY, stream=True)
                stop.wait(0.5)

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            go(w, "Overview")
            page.wait_for_function(  # a sampled point (drawn on the chart) with this traffic's tokens
                """() => document.querySelector('#ov-chart svg polyline, #ov-chart svg circle') &&
                         Number(document.querySelector('#ov-tps')?.textContent.replace(/,/g, '')) > 0""", timeout=25_000)
            assert page.locator("#ov-status").inner_text().startswith("Sampled every 10 s")
        finally:
            stop.set()
            sender.join(10)
        assert number(page.locator("#ov-rps").inner_text()) > 0
        assert page.locator("#ov-p50").inner_text().endswith("ms")
        assert page.locator("#ov-ttft").inner_text().endswith("ms"), "streams give a time to first token"
        page.locator("#ov-today-requests").wait_for()
        assert number(page.locator("#ov-today-requests").inner_text()) >= 3
        assert page.locator("#ov-chart svg").count() == 1
        page.screenshot(path=str(artifacts / "overview.png"), full_page=True)

        # Spend: by model, the day's chart, the table in dollars and cents, a CSV through a Blob URL.
        go(w, "Spend")
        page.get_by_label("Group by").select_option("model")
        page.get_by_role("button", name="Show").click()
        row = page.locator("#spend-out tbody tr", has_text="gpt-4o-mini")
        row.wait_for()
        cells = row.locator("td").all_inner_texts()
        assert number(cells[1]) >= 3
        assert re.fullmatch(r"\$\d+\.\d\d|< \$0\.01", cells[5]), cells
        assert page.locator("#spend-out svg rect").count() >= 7, "a bar per day of the week"
        assert page.locator("#spend-budgets tbody tr", has_text="key alice").is_visible()
        assert "$5.00 / month" in page.locator("#spend-budgets").inner_text()
        with page.expect_download() as caught:
            page.get_by_role("button", name="Export CSV").click()
        download = caught.value
        assert download.suggested_filename.endswith(".csv")
        lines = Path(download.path()).read_text().splitlines()
        assert lines[0] == "model,day,requests,errors,input_tokens,output_tokens,cost_usd"
        assert any(line.startswith("gpt-4o-mini,") for line in lines[1:])
        assert "CSV exported" in page.locator("#flash").inner_text()
        page.screenshot(path=str(artifacts / "spend.png"), full_page=True)

        # Requests: filtered by model; a row opens its detail (tokens by class, cost, latency, TTFT, trace).
        go(w, "Requests")
        page.get_by_label("Model").fill("gpt-4o-mini")
        page.get_by_label("Status").fill("200")
        page.get_by_role("button", name="Filter").click()
        first = page.locator("#requests-out tbody tr").first
        first.wait_for()
        assert "gpt-4o-mini" in first.inner_text()
        first.locator("button").click()
        detail = page.locator("#request-detail")
        detail.get_by_text("Trace id").wait_for()
        text = detail.inner_text()
        for label in ("Input tokens", "Cached input tokens", "Output tokens", "Reasoning tokens", "Cost", "Latency",
                      "TTFT", "Attempts"):
            assert label in text, label
        assert "hi" not in re.findall(r"\bhi\b", text), "no prompt text"
        page.screenshot(path=str(artifacts / "requests.png"), full_page=True)

        # Routing: the provider, the model's target and the config with its secrets replaced.
        go(w, "Routing")
        page.locator("#routing-out table").first.wait_for()
        assert "up" in page.locator("#routing-out").inner_text()
        assert "gpt-4o-mini" in page.locator("#routing-out").inner_text()
        page.locator("#config-json").wait_for()
        shown = page.locator("#config-json").inner_text()
        assert '"***"' in shown and UPSTREAM_SECRET not in shown
        page.screenshot(path=str(artifacts / "routing.png"), full_page=True)

        # Keys: create (shown once, copied), use, revoke (then 401); the audit trail has both.
        go(w, "Keys")
        page.locator("#keys-out tbody tr", has_text="alice").wait_for()
        assert "config file (read-only)" in page.locator("#keys-out tbody tr", has_text="alice").inner_text()
        page.get_by_role("button", name="Create key").click()
        page.get_by_label("Name", exact=True).fill("console-made")
        page.get_by_label("Team", exact=True).fill("search")
        page.get_by_label("Models (comma list)").fill("gpt-4o-mini, gpt-4o")
        page.get_by_role("button", name="Create", exact=True).click()
        secret_el = page.locator("#new-key")
        secret_el.wait_for()
        secret = secret_el.inner_text().strip()
        assert secret.startswith("sk-tw-")
        page.get_by_role("button", name="Copy").click()
        page.get_by_text("Copied", exact=True).wait_for()
        assert page.evaluate("navigator.clipboard.readText()") == secret
        assert "Key console-made created" in page.locator("#flash").inner_text()
        row = page.locator("#keys-out tbody tr", has_text="console-made")
        row.wait_for()
        key_id = row.locator("td").nth(1).inner_text().strip()
        assert key_id.startswith("key_")
        page.screenshot(path=str(artifacts / "keys-created.png"), full_page=True)
        assert chat(gw, secret) == 200

        page.get_by_label("Search keys").fill("console")  # (the server searches: wait for its answer)
        page.locator("#keys-out tbody tr", has_text="alice").wait_for(state="detached")
        assert page.locator("#keys-out tbody tr").count() == 1
        page.get_by_label("Search keys").fill("")
        page.locator("#keys-out tbody tr", has_text="alice").wait_for()

        page.get_by_role("button", name="Edit console-made").click()
        page.get_by_label("Budget (USD, empty: none)").fill("12.5")
        page.get_by_role("button", name="Save").click()
        page.locator("#flash", has_text="Key console-made updated").wait_for()
        page.locator("#keys-out tbody tr", has_text="console-made").get_by_text("$12.50 / month").wait_for()

        page.get_by_role("button", name="Revoke console-made").click()
        page.get_by_role("alertdialog").wait_for()
        assert chat(gw, secret) == 200, "nothing happens before the confirmation"
        page.screenshot(path=str(artifacts / "keys-revoke-confirm.png"), full_page=True)
        page.get_by_role("alertdialog").get_by_role("button", name="Revoke").click()
        page.locator("#flash", has_text="Key console-made revoked").wait_for()
        page.locator("#keys-out tbody tr", has_text="console-made").wait_for(state="detached")
        assert chat(gw, secret) == 401
        page.get_by_label("Show revoked keys").check()
        gone = page.locator("#keys-out tbody tr", has_text="console-made")
        gone.get_by_text("revoked", exact=True).wait_for()
        assert gone.locator("button").count() == 0, "nothing more to do to a revoked key"
        page.get_by_label("Show revoked keys").uncheck()
        gone.wait_for(state="detached")

        # An API error is shown as the API says it.
        page.get_by_role("button", name="Create key").click()
        page.get_by_label("Name", exact=True).fill("bad name!")
        page.get_by_role("button", name="Create", exact=True).click()
        page.locator("#key-form-box .error", has_text="is not a valid name").wait_for()
        page.get_by_role("button", name="Cancel").click()
        page.screenshot(path=str(artifacts / "keys.png"), full_page=True)

        go(w, "Audit")
        rows = page.locator("#audit-out tbody tr", has_text=key_id)
        rows.first.wait_for()
        actions = [r.locator("td").nth(2).inner_text() for r in rows.all()]
        assert actions == ["key.revoke", "key.update", "key.create"], actions
        assert "status" in rows.first.inner_text() and "revoked" in rows.first.inner_text()
        assert rows.nth(1).locator("td").nth(5).inner_text().startswith("budget:"), "an edit sends what changed only"
        made = rows.nth(2).inner_text()
        assert "created" in made and 'name: "console-made"' in made and 'models: ["gpt-4o-mini","gpt-4o"]' in made
        assert secret not in page.content()
        page.screenshot(path=str(artifacts / "audit.png"), full_page=True)

        w.check(ADMIN_KEY)
        assert secret not in " ".join(w.requests)

        page.get_by_role("button", name="Log out").click()
        page.get_by_label("Admin credential").wait_for()
        assert not page.locator("#shell").is_visible()
        assert page.locator("#page").inner_html() == "", "nothing of the session is left on the page"
        w.check(ADMIN_KEY)
    finally:
        w.close()
    assert not [e for e in w.errors if "Failed to load" not in e], w.errors


def test_a_team_admin_sees_its_team_only(browser: Any, gw: GatewayProcess, artifacts: Path):
    admin(gw, "POST", "/admin/teams", {"name": "ops"})
    theirs = admin(gw, "POST", "/admin/keys", {"name": "ops-only", "team": "ops"})
    mine = admin(gw, "POST", "/admin/keys", {"name": "search-svc", "team": "search"})
    w = Watched(browser, gw)
    page = w.page
    try:
        login(w, LEAD_KEY)
        assert "team search" in page.locator("#who").inner_text()
        go(w, "Keys")
        page.locator("#keys-out tbody tr", has_text="search-svc").wait_for()
        text = page.locator("#keys-out").inner_text()
        assert "ops-only" not in text and theirs["id"] not in text
        teams = [r.locator("td").nth(2).inner_text() for r in page.locator("#keys-out tbody tr").all()]
        assert teams and set(teams) == {"search"}, teams
        assert page.get_by_role("button", name="Create key").is_visible(), "a team admin makes its team's keys"
        assert page.get_by_role("button", name="Create team").count() == 0
        assert page.get_by_role("button", name=f"Revoke {mine['name']}").is_visible()
        page.screenshot(path=str(artifacts / "keys-team-admin.png"), full_page=True)
        go(w, "Overview")
        page.locator("#ov-today-requests").wait_for()
        assert "your team's day" in page.locator("#ov-status").inner_text()
        assert not page.locator("#ov-chart").is_visible()
        go(w, "Routing")
        page.locator("#routing-out .error").wait_for()
        assert "team admin" in page.locator("#routing-out .error").inner_text()
        w.check(LEAD_KEY)
    finally:
        w.close()


def test_a_viewer_gets_no_write_action(browser: Any, gw: GatewayProcess, artifacts: Path):
    w = Watched(browser, gw, color_scheme="dark")
    page = w.page
    try:
        login(w, VIEWER_KEY)
        go(w, "Keys")
        page.locator("#keys-out tbody tr", has_text="alice").wait_for()
        assert page.get_by_role("button", name="Create key").count() == 0
        assert page.get_by_role("button", name="Create team").count() == 0
        assert page.locator("#keys-out button").count() == 0
        page.locator("#teams-out tbody tr", has_text="search").wait_for()
        assert "null" not in page.locator("#page").inner_text()
        page.screenshot(path=str(artifacts / "keys-viewer-dark.png"), full_page=True)
        go(w, "Overview")
        page.locator("#ov-rps").wait_for()
        page.screenshot(path=str(artifacts / "overview-dark.png"), full_page=True)
        w.check(VIEWER_KEY)
    finally:
        w.close()


def test_phone_width_has_the_nav_behind_a_menu_button(browser: Any, gw: GatewayProcess, artifacts: Path):
    w = Watched(browser, gw, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = w.page
    try:
        login(w, ADMIN_KEY)
        menu = page.get_by_role("button", name="Menu")
        assert menu.is_visible()
        keys_link = page.get_by_role("navigation").get_by_role("link", name="Keys", exact=True)
        assert not keys_link.is_visible(), "the nav is folded away"
        page.screenshot(path=str(artifacts / "phone-overview.png"), full_page=True)
        menu.click()
        assert menu.get_attribute("aria-expanded") == "true"
        keys_link.wait_for(state="visible")
        page.screenshot(path=str(artifacts / "phone-menu.png"))
        keys_link.click()
        page.get_by_role("heading", name="Keys", level=1).wait_for()
        assert not keys_link.is_visible(), "choosing a page folds the nav again"
        menu.click()
        keys_link.wait_for(state="visible")
        page.keyboard.press("Escape")
        keys_link.wait_for(state="hidden")
        assert menu.get_attribute("aria-expanded") == "false"
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375 + 1, "no sideways scrolling of the page (wide tables scroll in their box)"
        page.screenshot(path=str(artifacts / "phone-keys.png"), full_page=True)
        w.check(ADMIN_KEY)
    finally:
        w.close()


def test_keyboard_only_login(browser: Any, gw: GatewayProcess):
    w = Watched(browser, gw)
    page = w.page
    try:
        page.goto(gw.url + "/ui")
        page.wait_for_function("document.activeElement && document.activeElement.id === 'credential'")
        page.keyboard.type(ADMIN_KEY)
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Log out").wait_for()
        page.get_by_role("navigation").get_by_role("link", name="Audit", exact=True).focus()
        page.keyboard.press("Enter")
        page.get_by_role("heading", name="Audit", level=1).wait_for()
        w.check(ADMIN_KEY)
    finally:
        w.close()


def test_without_app_js_the_login_form_sends_the_credential_nowhere(browser: Any, gw: GatewayProcess):
    """app.js failed to load (a flaky link, a proxy, an extension): the form is on screen with
    no script behind it. Submitting it must not put the credential in a URL (history, proxy
    logs), nor send it anywhere: the button stays disabled, and the form would POST anyway."""
    w = Watched(browser, gw)
    page = w.page
    try:
        page.route("**/ui/app.js", lambda route: route.abort())
        page.goto(gw.url + "/ui", wait_until="load")
        page.get_by_label("Admin credential").fill(ADMIN_KEY)
        submitted: list[str] = []  # a form submission is a navigation (GET with the query, or POST)
        page.on("request", lambda r: submitted.append(f"{r.method} {r.url}") if r.is_navigation_request() else None)
        page.get_by_label("Admin credential").press("Enter")
        page.get_by_role("button", name="Log in").click(force=True)  # (a disabled button: no click reaches it)
        page.wait_for_timeout(500)
        assert submitted == []
        assert page.url == gw.url + "/ui" and ADMIN_KEY not in page.url
        assert not [u for u in w.requests if ADMIN_KEY in u]
        assert page.get_by_role("button", name="Log in").is_disabled()
        assert page.locator("#login-form").get_attribute("method") == "post"
    finally:
        w.close()


def test_teams_and_rotation_through_the_console(browser: Any, gw: GatewayProcess, artifacts: Path):
    w = Watched(browser, gw)
    page = w.page
    try:
        login(w, ADMIN_KEY)
        go(w, "Keys")
        page.get_by_role("button", name="Create team").click()
        page.get_by_label("Team name").fill("console-team")
        page.get_by_role("button", name="Create team").last.click()
        page.locator("#flash", has_text="Team console-team created").wait_for()
        page.get_by_role("button", name="Edit team console-team").click()
        page.locator("#team-form-box").get_by_label("Budget (USD, empty: none)").fill("3")
        page.locator("#team-form-box").get_by_role("button", name="Save").click()
        page.locator("#flash", has_text="Team console-team updated").wait_for()
        page.locator("#teams-out tbody tr", has_text="console-team").get_by_text("$3.00 / month").wait_for()

        page.get_by_role("button", name="Create key").click()
        page.get_by_label("Name", exact=True).fill("rotated-one")
        page.get_by_label("Team", exact=True).fill("console-team")
        page.get_by_role("button", name="Create", exact=True).click()
        first = page.locator("#new-key").inner_text().strip()
        assert chat(gw, first) == 200
        page.get_by_role("button", name="Rotate rotated-one").click()
        page.get_by_role("alertdialog").get_by_role("button", name="Rotate").click()
        page.locator("#flash", has_text="Key rotated-one rotated").wait_for()
        fresh = page.locator("#new-key").inner_text().strip()
        assert fresh.startswith("sk-tw-") and fresh != first
        page.get_by_role("button", name="Copy").click()
        page.get_by_text("Copied", exact=True).wait_for()
        assert chat(gw, fresh) == 200 and chat(gw, first) == 200, "the old key works through its grace"

        page.get_by_role("button", name="Delete team console-team").click()
        page.get_by_role("alertdialog").get_by_role("button", name="Delete").click()
        page.locator("#team-form-box .error", has_text="live key").wait_for()  # the API's own message
        page.screenshot(path=str(artifacts / "teams-delete-refused.png"), full_page=True)
        page.get_by_role("alertdialog").get_by_role("button", name="Cancel").click()
        page.get_by_role("button", name="Revoke rotated-one").click()
        page.get_by_role("alertdialog").get_by_role("button", name="Revoke").click()
        page.locator("#flash", has_text="Key rotated-one revoked").wait_for()
        page.get_by_role("button", name="Delete team console-team").click()
        page.get_by_role("alertdialog").get_by_role("button", name="Delete").click()
        page.locator("#flash", has_text="Team console-team deleted").wait_for()
        page.locator("#teams-out tbody tr", has_text="console-team").wait_for(state="detached")
        w.check(ADMIN_KEY)
    finally:
        w.close()


def test_a_credential_that_stops_working_logs_out(browser: Any, gw: GatewayProcess):
    w = Watched(browser, gw)
    page = w.page
    try:
        login(w, ADMIN_KEY)
        go(w, "Audit")
        page.route("**/admin/keys**", lambda route: route.fulfill(  # as the gateway answers a removed credential
            status=401, content_type="application/json",
            body=json.dumps({"error": {"message": "This endpoint needs an admin credential.", "type": "invalid_request_error",
                                       "param": None, "code": "invalid_api_key"}})))
        go_keys = page.get_by_role("navigation").get_by_role("link", name="Keys", exact=True)
        go_keys.click()
        page.locator("#login-error", has_text="Logged out: This endpoint needs an admin credential.").wait_for()
        assert page.get_by_label("Admin credential").is_visible()
        assert not page.locator("#shell").is_visible()
    finally:
        w.close()


def test_the_keys_page_reaches_every_key_and_team_however_many(browser: Any, upstream: FakeOpenAI, tmp_path: Path):
    """The API pages its lists: the Keys page reads keys a page at a time ("Show more keys",
    after=), sends its search to the server (q=: a key past the first page is found), and reads
    every page of teams (here more than the 1000 one page holds)."""
    import asyncio

    from tollway.core import config as config_mod
    from tollway.core.tenancy.inputs import KeyCreate, TeamCreate
    from tollway.core.tenancy.roles import OWNER
    from tollway.gateway.store.sqlite import SqliteStore
    from tollway.gateway.tenancy.actions import Actions

    text = _config(upstream.url, tmp_path / "tollway.db")

    async def provision() -> None:  # straight into the store, as `tollway keys` would (the admin API is rate limited)
        store = SqliteStore(str(tmp_path / "tollway.db"))
        await store.open()
        try:
            actions = Actions(store, config_mod.loads(text))
            for i in range(1000):  # with alice, more than the 1000 one page of the API holds
                await actions.create_key(OWNER, KeyCreate(name=f"bulk-{i:04d}"))
            await actions.create_key(OWNER, KeyCreate(name="newest-service"))
            for i in range(1000):
                await actions.create_team(OWNER, TeamCreate(name=f"team-{i:04d}"))
        finally:
            await store.aclose()
    maker = threading.Thread(target=asyncio.run, args=(provision(),))  # (Playwright's loop runs in this thread)
    maker.start()
    maker.join()
    gw = GatewayProcess(text)
    w = Watched(browser, gw)
    page = w.page
    try:
        login(w, ADMIN_KEY)
        go(w, "Keys")
        page.locator("#keys-out tbody tr", has_text="bulk-0000").wait_for()
        assert page.locator("#keys-out tbody tr", has_text="newest-service").count() == 0, "not on the first page"
        page.locator("#teams-out tbody tr", has_text="team-0999").wait_for()  # on the second page of teams

        page.get_by_label("Search keys").fill("newest")
        page.locator("#keys-out tbody tr", has_text="newest-service").wait_for()
        page.wait_for_function("() => document.querySelectorAll('#keys-out tbody tr').length === 1")
        assert not page.locator("#more-keys").is_visible()
        page.get_by_label("Search keys").fill("")
        page.locator("#keys-out tbody tr", has_text="newest-service").wait_for(state="detached")

        more = page.get_by_role("button", name="Show more keys")
        while page.locator("#keys-out tbody tr", has_text="newest-service").count() == 0:
            shown = page.locator("#keys-out tbody tr").count()
            more.click()
            page.wait_for_function("(n) => document.querySelectorAll('#keys-out tbody tr').length > n", arg=shown)
        assert page.locator("#keys-out tbody tr").count() == 1002, "alice, the 1000 and the newest, each once"
        assert not more.is_visible(), "nothing more to read"
        w.check(ADMIN_KEY)
    finally:
        w.close()
        gw.stop()
