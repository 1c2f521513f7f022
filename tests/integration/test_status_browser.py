"""The status page in a real headless browser (Chromium through playwright) against the
real stack: Nginx → Gunicorn (two workers), so the page's polls land on either worker."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support import DEMO_MODELS, IRIS, IRIS_OBJECT

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every wait is bounded: the page refreshes every few seconds.
WAIT_MS = 20_000


def browser_required() -> bool:
    return bool(
        os.environ.get("CI")
        or os.environ.get("MODEL_SERVICE_REQUIRE_NGINX")
        or os.environ.get("MODEL_SERVICE_REQUIRE_BROWSER")
    )


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        playwright_missing = True
    else:
        playwright_missing = False
    missing = [
        what
        for what, absent in (
            ("/usr/bin/chromium (apt-get install -y chromium)", not CHROMIUM.exists()),
            ("playwright (pip install -e '.[dev]')", playwright_missing),
        )
        if absent
    ]
    if missing:
        if browser_required():
            pytest.fail(f"CI requires {' and '.join(missing)}")
        pytest.skip(f"not installed: {', '.join(missing)}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.problems = []
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    try:
        yield page
    finally:
        context.close()


def field_text(page, name: str, field: str) -> str:
    return page.inner_text(f'section[data-model="{name}"] [data-field="{field}"]')


def as_number(text: str) -> float:
    match = re.search(r"-?[\d,]+(?:\.\d+)?", text)
    assert match, f"no number in {text!r}"
    return float(match.group().replace(",", ""))


def wait_for_field(page, name: str, field: str, predicate_js: str) -> None:
    """Wait (bounded) until the field's text satisfies a JS predicate on `t`."""
    selector = f'section[data-model="{name}"] [data-field="{field}"]'
    page.wait_for_function(
        f"""() => {{
            const node = document.querySelector('{selector}');
            if (!node) return false;
            const t = node.textContent.trim();
            return ({predicate_js});
        }}""",
        timeout=WAIT_MS,
    )


def test_the_page_shows_every_model_and_follows_the_traffic(stack, http, page):
    served = [m["name"] for m in http.get(f"{stack.url}/v1/models", timeout=10).json()["models"]]
    assert sorted(served) == sorted(DEMO_MODELS)

    response = page.goto(f"{stack.url}/status", timeout=WAIT_MS)
    assert response is not None and response.status == 200
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    for name in served:
        section = page.locator(f'section[data-model="{name}"]')
        assert section.locator("h2").inner_text() == name
        assert section.is_visible()
    assert field_text(page, IRIS, "test-score") == "0.967"
    assert field_text(page, IRIS, "baseline-score") == "0.227"

    # The first refresh fills in the cumulative count.
    wait_for_field(page, IRIS, "requests-total", r"/^[\d,]+$/.test(t)")
    start = as_number(field_text(page, IRIS, "requests-total"))
    other_start = as_number(field_text(page, "diabetes-regressor", "requests-total"))

    url = f"{stack.url}/v1/models/{IRIS}/predict"
    for _ in range(5):
        assert http.post(url, json={"instances": [IRIS_OBJECT]}, timeout=10).status_code == 200
    for _ in range(2):
        assert http.post(url, json={"instances": [{"nope": 1}]}, timeout=10).status_code == 422

    # The page's own refresh picks it up; nothing here reloads it.
    expected = int(start) + 7
    wait_for_field(page, IRIS, "requests-total", f"Number(t.replace(/,/g, '')) === {expected}")
    # The window began before the traffic: 7 requests in it, 2 of them refused.
    wait_for_field(page, IRIS, "window-requests", r"/^7 in /.test(t)")
    assert as_number(field_text(page, IRIS, "rate")) > 0
    assert field_text(page, IRIS, "error-rate") == "28.6 %"
    assert field_text(page, IRIS, "status-4xx") == "2"
    assert field_text(page, IRIS, "status-2xx") == "5"
    assert re.fullmatch(r"[\d.]+ ms", field_text(page, IRIS, "p50"))
    assert (
        page.locator(f'section[data-model="{IRIS}"] [data-slot="rate-chart"] svg polyline').count()
        == 1
    )
    # Five rows are too few to judge drift on: the drift panel says so for the version and
    # in place of each feature's PSI, and flags nothing.
    wait_for_field(page, IRIS, "drift-too-few", "t === 'too few rows (5 of 100)'")
    drift_panel = page.locator(f'section[data-model="{IRIS}"] [data-slot="drift"]')
    assert drift_panel.locator("svg text", has_text="too few rows (5 of 100)").count() == 4
    assert drift_panel.locator('[data-field="drift-flagged"]').count() == 0
    # Another model's figures did not move.
    assert as_number(field_text(page, "diabetes-regressor", "requests-total")) == other_start
    assert "refreshed" in page.inner_text("#refresh-state")
    assert page.problems == []
