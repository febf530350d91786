"""The dashboard's key list for an account with many keys: page weight, the
server's time, and the time to first render in headless Chromium.

The account's keys are made straight in the store (cheap bcrypt: hashing is
not what is measured); one key in ten has requests in the last days, so
its small chart reads usage. The app is served by Werkzeug's threaded
server; the browser part is skipped, saying so, without Playwright or
Chromium (``APIKEY_CHROMIUM``, default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t
import urllib.request
from datetime import UTC, datetime, timedelta

from flask import Flask
from werkzeug.serving import make_server

from apikey_middleware import SQLAlchemyKeyStore, UsageRecord
from apikey_middleware.dashboard import create_dashboard

from ._table import Table

SECTION = "Dashboard key list"
CHROMIUM = os.environ.get("APIKEY_CHROMIUM", "/usr/bin/chromium")
_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
_SCOPES = {"clients:read": "Read clients", "clients:write": "Create clients"}


def _fill(store: SQLAlchemyKeyStore, keys: int) -> None:
    now = datetime.now(UTC)
    rows = []
    for number in range(keys):
        issued = store.create_key(f"key {number}", scopes=list(_SCOPES), owner="bench")
        if number % 10 == 0:
            rows += [
                UsageRecord(issued.id, now - timedelta(hours=h), "GET", "/v1/x", 200, "127.0.0.1")
                for h in range(0, 72, 6)
            ]
    store.record_usage(rows)


def _app(store: SQLAlchemyKeyStore, per_page: int) -> Flask:
    app = Flask(__name__)
    app.secret_key = os.urandom(16)
    app.register_blueprint(
        create_dashboard(
            store,
            current_owner=lambda: "bench",
            login_url="/login",
            scopes=_SCOPES,
            per_page=per_page,
        ),
        url_prefix="/keys",
    )
    return app


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - our own server
        return t.cast(bytes, response.read())


def run(table: Table, url: str, *, keys: int, rounds: int) -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log in the table
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=4)
    store.create_schema()
    _fill(store, keys)
    browser = _browser()
    try:
        for per_page in (50, keys):
            server = make_server("127.0.0.1", 0, _app(store, per_page), threaded=True)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            base = f"http://127.0.0.1:{server.server_port}/keys/"
            label = f"{keys:,} keys, {min(per_page, keys):,} shown"
            try:
                html = _get(base)
                assets = sum(
                    len(_get(f"{base}static/{n}")) for n in ("dashboard.css", "dashboard.js")
                )
                table.figure(SECTION, f"{label}: HTML bytes", [len(html)], "bytes")
                table.figure(SECTION, f"{label}: HTML+CSS+JS bytes", [len(html) + assets], "bytes")
                served = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    _get(base)
                    served.append((time.perf_counter() - started) * 1000)
                table.figure(SECTION, f"{label}: server time", served, "ms")
                if browser is not None:
                    paints = [_first_paint(browser, base) for _ in range(rounds)]
                    table.figure(SECTION, f"{label}: first contentful paint", paints, "ms")
            finally:
                server.shutdown()
                thread.join(timeout=10)
                server.server_close()
        if browser is None:
            print(f"{SECTION}: no browser figures (no Playwright, or no Chromium at {CHROMIUM})")
    finally:
        if browser is not None:
            browser.close()
            _PLAYWRIGHT.pop().stop()
        store.close()


_PLAYWRIGHT: list[t.Any] = []

# Paint entries are reported shortly after the paint, not always by "load".
_FIRST_PAINT = """
new Promise((resolve) => {
  new PerformanceObserver((entries) => {
    const paint = entries.getEntriesByName("first-contentful-paint")[0];
    if (paint) resolve(paint.startTime);
  }).observe({type: "paint", buffered: true});
})
"""


def _browser() -> t.Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not os.access(CHROMIUM, os.X_OK):
        return None
    playwright = sync_playwright().start()
    _PLAYWRIGHT.append(playwright)
    return playwright.chromium.launch(executable_path=CHROMIUM, args=_FLAGS)


def _first_paint(browser: t.Any, url: str) -> float:
    """From the navigation's start to the first contentful paint, in a new
    context each time (nothing cached)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(url)
        return float(page.evaluate(_FIRST_PAINT))
    finally:
        context.close()
