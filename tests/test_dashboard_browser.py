"""The dashboard in a real browser: Debian's Chromium, headless, driven by
Playwright, against the example app served by a real WSGI server.

Skipped, saying why, without Playwright or without Chromium
(``/usr/bin/chromium``, or ``APIKEY_CHROMIUM``; ``.ci/run`` installs it).
Screenshots of each screen go to ``APIKEY_SCREENSHOT_DIR`` when it is set
(``make screenshots`` writes those of the docs), else to the test's folder.
"""

from __future__ import annotations

import os
import threading
import typing as t
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

from examples.flask_app import create_app

from .conftest import TEST_ROUNDS
from .servers import free_port, request

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("APIKEY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PASSWORDS = {"alice": "alice-demo-password", "bob": "bob-demo-password"}
WARNING = "API keys are only displayed once upon creation. Make sure to save them securely."

# Recorded in every page before its own scripts run (an init script is not
# subject to the page's Content-Security-Policy): each violation the browser
# reports.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


@dataclass
class Site:
    base: str
    screenshots: Path

    def api(self, key: str, method: str = "GET", path: str = "/v1/clients") -> int:
        status, _, _ = request(
            self.base + path, {"Authorization": f"Bearer {key}"}, method=method, timeout=10
        )
        return status


@dataclass
class Tab:
    """A browser page, with what its console and CSP said."""

    page: Page
    site: Site
    errors: list[str] = field(default_factory=list)

    def go(self, path: str) -> None:
        self.page.goto(self.site.base + path)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and CSP violations so far."""
        violations = self.page.evaluate("window.__cspViolations || []")
        return self.errors + [f"CSP: {text}" for text in violations]

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.site.screenshots / f"{name}.png"), full_page=True)

    def sign_in(self, account: str) -> None:
        self.go("/settings/api-keys/")
        assert self.page.url.startswith(self.site.base + "/login?next=")
        self.page.get_by_label("Account").fill(account)
        self.page.get_by_label("Password").fill(PASSWORDS[account])
        self.page.get_by_role("button", name="Sign in").click()
        assert self.page.url == self.site.base + "/settings/api-keys/"

    def generate(self, name: str, key_type: str, scopes: list[str]) -> str:
        page = self.page
        page.get_by_role("link", name="Generate New Key").click()
        page.get_by_label("Name").fill(name)
        page.get_by_label(key_type, exact=True).check()
        for scope in scopes:
            page.get_by_label(scope, exact=True).check()
        page.get_by_role("button", name="Generate").click()
        return page.get_by_label(f"{key_type} key").input_value()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("dashboard")
    app = create_app(
        {
            "APIKEY_DATABASE_URL": f"sqlite:///{folder / 'keys.db'}",
            "APIKEY_BCRYPT_ROUNDS": TEST_ROUNDS,
            "EXAMPLE_ACCOUNTS": {n: generate_password_hash(p) for n, p in PASSWORDS.items()},
        }
    )
    with app.app_context():
        app.extensions["apikeys"].store.create_schema()
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    shots = Path(os.environ.get("APIKEY_SCREENSHOT_DIR") or folder / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Site(f"http://127.0.0.1:{server.server_port}", shots)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        app.extensions["apikeys"].middleware.close()
        app.extensions["apikeys"].store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport={"width": 1366, "height": 768})
    made.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.base)
    made.add_init_script(RECORD_VIOLATIONS)
    made.set_default_timeout(15_000)
    yield made
    made.close()


def open_tab(context: BrowserContext, site: Site) -> Tab:
    tab = Tab(context.new_page(), site)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            tab.errors.append(f"console: {message.text}")

    tab.page.on("console", on_console)
    tab.page.on("pageerror", lambda error: tab.errors.append(f"exception: {error}"))
    return tab


@pytest.fixture
def alice(context: BrowserContext, site: Site) -> Tab:
    tab = open_tab(context, site)
    tab.sign_in("alice")
    return tab


def test_generate_use_rotate_see_usage_and_revoke(alice: Tab, site: Site) -> None:
    page = alice.page
    alice.shot("list-empty")
    page.get_by_role("link", name="Generate New Key").click()
    alice.shot("generate")
    alice.go("/settings/api-keys/")

    key = alice.generate("billing server", "Live", ["clients:read", "clients:write"])
    assert key.startswith("sk_live_")
    assert page.get_by_role("alert").inner_text() == WARNING
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied to the clipboard.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == key
    alice.shot("created")

    assert site.api(key) == 200
    assert site.api(key, "DELETE", "/v1/clients/1") == 403

    page.get_by_role("link", name="Done").click()
    page.reload()
    row = page.locator("tbody tr", has_text="billing server")
    assert "sk_live_" in row.inner_text()
    assert "Live" in row.inner_text()
    assert "clients:read" in row.inner_text()
    assert key not in page.content()
    assert key[23:] not in page.content()
    # Back to the key's page: it is no-store, so the browser has no copy to
    # show (it would have to post the form again).
    with pytest.raises(Exception, match="ERR_CACHE_MISS"):
        page.go_back()
    page.wait_for_url("chrome-error://**")
    page.wait_for_load_state()
    assert key not in page.content()

    alice.go("/settings/api-keys/")
    page.get_by_role("link", name="Rotate billing server").click()
    alice.shot("rotate")
    page.get_by_label("Grace period for the old key").select_option("1 hour")
    page.get_by_role("button", name="Rotate").click()
    new_key = page.get_by_label("Live key").input_value()
    assert new_key != key
    assert page.get_by_role("alert").inner_text() == WARNING
    assert "keeps working until" in page.inner_text("main")
    assert site.api(key) == 200
    assert site.api(new_key) == 200
    assert site.api(new_key, "DELETE", "/v1/clients/1") == 403

    page.get_by_role("link", name="Done").click()
    assert key not in page.content()
    assert new_key not in page.content()
    # The old key's usage: the requests made above, written within a second.
    old_row = page.locator("tbody tr", has_text=key[:12])
    old_row.get_by_role("link", name="Usage of billing server").click()
    chart = page.get_by_role("img")
    for _ in range(50):
        if "3 requests" in (chart.get_attribute("aria-label") or ""):
            break
        page.wait_for_timeout(200)
        page.reload()
    assert "3 requests in the last 48 hours: 2xx 2, 4xx 1" in (
        chart.get_attribute("aria-label") or ""
    )
    text = page.locator("table.akd-usage").inner_text()
    assert "GET" in text
    assert "DELETE" in text
    assert "/v1/clients/1" in text
    assert "403" in text
    alice.shot("usage")

    alice.go("/settings/api-keys/")
    new_row = page.locator("tbody tr", has_text=new_key[:12])
    new_row.get_by_role("link", name="Revoke billing server").click()
    assert "immediately invalidates all requests" in page.inner_text("main")
    alice.shot("revoke")
    page.get_by_role("button", name="Confirm").click()
    assert page.get_by_role("status").first.inner_text().startswith("Revoked “billing server”")
    assert site.api(new_key) == 401
    assert site.api(key) == 200  # the old key still has its grace
    alice.shot("list")
    assert alice.problems() == []


def test_another_account_can_neither_see_nor_revoke_the_keys(
    browser: Browser, alice: Tab, site: Site
) -> None:
    key = alice.generate("alice only", "Test", ["clients:read"])
    key_id = key[8:22]
    bob_context = browser.new_context()
    bob_context.add_init_script(RECORD_VIOLATIONS)
    try:
        bob = open_tab(bob_context, site)
        bob.sign_in("bob")
        assert "alice only" not in bob.page.content()
        for path in ("usage", "revoke", "rotate"):
            response = bob.page.goto(f"{site.base}/settings/api-keys/{key_id}/{path}")
            assert response is not None
            assert response.status == 404
        # Bob's own valid CSRF token, on a form aimed at Alice's key.
        bob.go("/settings/api-keys/")
        status = bob.page.evaluate(
            """async (keyId) => {
                const body = new FormData();
                body.append("csrf_token", document.querySelector("[name=csrf_token]").value);
                const answer = await fetch(keyId + "/revoke", {method: "POST", body});
                return answer.status;
            }""",
            key_id,
        )
        assert status == 404
        assert site.api(key) == 200
        status_logged = "Failed to load resource: the server responded with a status of 404"
        assert set(bob.problems()) == {f"console: {status_logged} (NOT FOUND)"}
    finally:
        bob_context.close()


def test_a_form_without_its_csrf_token_is_refused(alice: Tab, site: Site) -> None:
    page = alice.page
    page.get_by_role("link", name="Generate New Key").click()
    page.get_by_label("Name").fill("forged")
    page.get_by_label("clients:read", exact=True).check()
    page.evaluate("document.querySelector('main [name=csrf_token]').remove()")
    with page.expect_response(lambda response: response.request.method == "POST") as answer:
        page.get_by_role("button", name="Generate").click()
    assert answer.value.status == 400
    assert "This form was refused" in page.inner_text("h1")
    alice.go("/settings/api-keys/")
    assert "forged" not in page.content()


def test_bad_input_shows_the_form_again_with_a_message(alice: Tab) -> None:
    page = alice.page
    page.get_by_role("link", name="Generate New Key").click()
    page.get_by_label("Name").fill("no permissions")
    page.get_by_label("Expires on").fill("2001-01-01")
    page.get_by_role("button", name="Generate").click()
    main = page.inner_text("main")
    assert "Choose at least one permission." in main
    assert "Choose an expiry date in the future." in main
    assert page.get_by_label("Name").input_value() == "no permissions"
    alice.shot("generate-errors")
    # Chrome logs the page's own status 400; nothing else may be said.
    assert alice.problems() == [
        "console: Failed to load resource: the server responded with a status of 400 (BAD REQUEST)"
    ]


def test_inline_script_is_blocked_and_reported(alice: Tab) -> None:
    # The detector the other tests rely on, shown to fire.
    alice.page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.ran = 1'; document.body.append(s); }"
    )
    alice.page.wait_for_function("window.__cspViolations.length > 0")
    assert alice.page.evaluate("window.ran === undefined")
    assert any("script-src" in problem for problem in alice.problems())


def test_the_pages_work_with_javascript_off(browser: Browser, site: Site) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        tab = open_tab(context, site)
        tab.sign_in("alice")
        key = tab.generate("no script", "Test", ["clients:read"])
        assert key.startswith("sk_test_")
        assert not tab.page.get_by_role("button", name="Copy").is_visible()
        assert site.api(key) == 200
    finally:
        context.close()


@pytest.mark.parametrize("width", [1024, 1280])
def test_every_key_action_is_on_screen_on_a_laptop(
    browser: Browser, site: Site, width: int
) -> None:
    """A key with a long name, every scope, an expiry and a rate limit: its
    Rotate and Revoke stay whole and inside the window, without scrolling."""
    made = browser.new_context(viewport={"width": width, "height": 800})
    try:
        tab = open_tab(made, site)
        tab.sign_in("bob")
        page = tab.page
        page.get_by_role("link", name="Generate New Key").click()
        page.get_by_label("Name").fill("nightly reconciliation of the billing ledger")
        page.get_by_label("Live", exact=True).check()
        for checkbox in page.get_by_role("checkbox").all():
            if checkbox.get_attribute("name") == "scopes":
                checkbox.check()
        page.get_by_label("Rate limit (optional)").fill("10/second;1000/hour")
        page.get_by_role("button", name="Generate").click()
        tab.go("/settings/api-keys/")
        for action in ("Rotate", "Revoke"):
            link = page.get_by_role("link", name=f"{action} nightly reconciliation").first
            box = link.bounding_box()
            assert box is not None
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= width, f"{action} ends at {box['x'] + box['width']}"
            assert link.inner_text() == action
        assert tab.problems() == []
    finally:
        made.close()
