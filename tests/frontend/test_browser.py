"""The dashboard in a real headless Chromium, served by a real daphne process.

Screenshots go to $PLATFORM_TEST_ARTIFACTS/frontend/ (default test-artifacts/frontend/).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect, sync_playwright
from websockets.sync.client import connect

from tests.frontend.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    IRIS_ROW,
    PASSWORD,
    artifacts_dir,
    create_api_key,
    create_user,
    login,
    restart,
)

DESKTOP = {"viewport": {"width": 1440, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
# Statistics go out once a second; a few seconds covers any scheduling delay.
UPDATE_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def server(daphne_server):
    create_user(daphne_server, "operator", staff=True)
    create_user(daphne_server, "customer", staff=False)
    return daphne_server


@pytest.fixture(scope="module")
def api_key(server) -> str:
    return create_api_key(server, "browser-tests")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """``new_context(**options)``: a fresh browser context (cookies, storage), closed after the test."""
    contexts: list[BrowserContext] = []

    def make(**options) -> BrowserContext:
        contexts.append(browser.new_context(**options))
        return contexts[-1]

    yield make
    for context in contexts:
        context.close()


class PageProblems(list):
    """Script errors and console errors of a page, which a working dashboard never has."""

    def watch(self, page: Page) -> Page:
        page.on("pageerror", lambda error: self.append(f"page error: {error}"))
        page.on("console", self._console)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.append(f"console: {message.text}")


def send_predictions(server, key: str, *, count: int, rows: int = 1, invalid: int = 0, model: str = "iris") -> None:
    """Pipeline ``count`` good and ``invalid`` bad requests over one connection and read every reply."""
    with connect(f"{server.ws_url}/ws/v1/predict/", additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        for i in range(count):
            ws.send(json.dumps({"id": i, "model": model, "inputs": [IRIS_ROW] * rows}))
        for i in range(invalid):
            ws.send(json.dumps({"id": f"bad-{i}", "model": model, "inputs": [IRIS_ROW[:3]]}))
        replies = [json.loads(ws.recv()) for _ in range(count + invalid)]
    assert sum(reply["type"] == "prediction" for reply in replies) == count
    assert sum(reply["type"] == "error" for reply in replies) == invalid


def log_in_through_the_form(page: Page, server, username: str) -> None:
    page.goto(f"{server.url}/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


def add_session(context: BrowserContext, server, username: str = "operator") -> None:
    """Log in over HTTP and give the browser context the session cookie."""
    session = login(server, username).split("=", 1)[1]
    context.add_cookies([{"name": "sessionid", "value": session, "url": server.url}])


def open_logged_in(context: BrowserContext, server, *, problems: PageProblems) -> Page:
    add_session(context, server)
    page = problems.watch(context.new_page())
    page.goto(f"{server.url}/")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    expect(page.locator("#status")).to_contain_text("1 process", timeout=UPDATE_TIMEOUT_MS)
    return page


def predictions_total(page: Page) -> int:
    return int(page.locator("#kpi-predictions-total").inner_text().split()[0].replace(",", ""))


def chart_has_data(page: Page, chart: str, dataset: int = 0) -> bool:
    return page.evaluate(
        "([id, i]) => Chart.getChart(id).data.datasets[i].data.some((p) => (p && typeof p === 'object' ? p.y : p) > 0)",
        [chart, dataset],
    )


def test_live_counters_charts_feed_and_try_it(server, api_key, new_context):
    problems = PageProblems()
    page = problems.watch(new_context(**DESKTOP, color_scheme="light").new_page())

    log_in_through_the_form(page, server, "operator")
    expect(page).to_have_url(f"{server.url}/")
    expect(page.locator("#status")).to_contain_text("Live · 1 process", timeout=UPDATE_TIMEOUT_MS)
    # Nothing has been served yet: every panel says so.
    expect(page.locator("#kpi-predictions-total")).to_have_text("0 since start")
    expect(page.locator('.area-throughput [data-empty-for="traffic"]')).to_be_visible()
    expect(page.locator('.area-throughput [data-empty-for="traffic"]')).to_contain_text("No traffic yet")
    expect(page.locator("#feed")).to_contain_text("No predictions yet")
    expect(page.locator("#errors")).to_contain_text("No errors")
    page.screenshot(path=artifacts_dir() / "dashboard-empty-desktop-light.png", full_page=True)

    send_predictions(server, api_key, count=40, rows=3, invalid=4)

    expect(page.locator("#kpi-predictions-total")).to_have_text("40 since start", timeout=UPDATE_TIMEOUT_MS)
    expect(page.locator("#kpi-rows-total")).to_have_text("120 rows since start")
    expect(page.locator("#kpi-errors-total")).to_have_text("4 since start")
    expect(page.locator("#errors .bar-row")).to_have_text(re.compile(r"invalid_input\s*4"))
    expect(page.locator('.area-throughput [data-empty-for="traffic"]')).to_be_hidden()
    expect(page.locator('.area-batches [data-empty-for="batches"]')).to_be_hidden()
    assert chart_has_data(page, "chart-throughput", 0), "no predictions/s in the throughput chart"
    assert chart_has_data(page, "chart-throughput", 1), "no rows/s in the throughput chart"
    assert chart_has_data(page, "chart-latency", 1), "no p95 in the latency chart"
    assert chart_has_data(page, "chart-batches"), "no model calls in the batch-size chart"
    iris = page.locator("#models tbody tr", has_text="iris")
    expect(iris.locator("td").nth(1)).to_have_text("v1")
    expect(iris.locator("td").last).to_have_text("40")
    expect(page.locator("#feed tbody tr", has_text="setosa").first).to_be_visible()
    expect(page.locator("#feed tbody tr", has_text="invalid_input").first).to_be_visible()
    expect(page.locator("#processes .process-share")).to_have_text("100%")

    # The try-it panel, through the prediction protocol.
    expect(page.locator("#tryit-status")).to_contain_text("ready")
    page.select_option("#tryit-model", "iris")
    expect(page.locator("#tryit-inputs input").first).to_have_value("5.1")
    page.click("#tryit-submit")
    expect(page.locator('[data-result="label"]')).to_have_text("setosa")
    expect(page.locator("#tryit-result")).to_contain_text("batch of 1 row")
    expect(page.locator("#kpi-predictions-total")).to_have_text("41 since start", timeout=UPDATE_TIMEOUT_MS)

    page.select_option("#tryit-model", "diabetes")
    page.click("#tryit-submit")
    expect(page.locator('[data-result="value"]')).to_have_text(re.compile(r"^-?\d+(\.\d+)?$"))

    page.fill("#tryit-inputs input >> nth=0", "not a number")
    page.click("#tryit-submit")
    expect(page.locator("#tryit-result")).to_contain_text("must be a number")

    page.select_option("#tryit-model", "iris")
    page.click("#tryit-submit")
    expect(page.locator('[data-result="label"]')).to_have_text("setosa")
    page.screenshot(path=artifacts_dir() / "dashboard-desktop-light.png", full_page=True)
    assert problems == []


@pytest.mark.parametrize(
    ("name", "options", "scheme"),
    [("desktop-dark", DESKTOP, "dark"), ("phone-light", PHONE, "light"), ("phone-dark", PHONE, "dark")],
)
def test_readable_on_a_laptop_and_a_phone_in_light_and_dark(server, api_key, new_context, name, options, scheme):
    problems = PageProblems()
    page = open_logged_in(new_context(color_scheme=scheme, **options), server, problems=problems)
    send_predictions(server, api_key, count=20, rows=2)
    expect(page.locator("#kpi-predictions-rate")).not_to_have_text("–", timeout=UPDATE_TIMEOUT_MS)
    expect(page.locator("#feed tbody tr", has_text="setosa").first).to_be_visible(timeout=UPDATE_TIMEOUT_MS)
    expect(page.locator("#tryit-status")).to_contain_text("ready")
    page.select_option("#tryit-model", "iris")
    page.click("#tryit-submit")
    expect(page.locator('[data-result="label"]')).to_have_text("setosa")

    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == ("rgb(13, 17, 23)" if scheme == "dark" else "rgb(244, 246, 250)")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the screen"
    page.screenshot(path=artifacts_dir() / f"dashboard-{name}.png", full_page=True)
    assert problems == []


def test_the_theme_toggle_overrides_the_system_and_is_remembered(server, new_context):
    problems = PageProblems()
    page = open_logged_in(new_context(color_scheme="light", **DESKTOP), server, problems=problems)
    toggle = page.locator("#theme-toggle")
    expect(toggle).to_contain_text("Auto")

    toggle.click()
    toggle.click()
    expect(toggle).to_contain_text("Dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(13, 17, 23)"
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    page.locator("#theme-toggle").click()
    expect(page.locator("#theme-toggle")).to_contain_text("Auto")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(244, 246, 250)"
    assert problems == []


def test_without_the_chart_library_the_page_still_works(server, api_key, new_context):
    context = new_context(**DESKTOP)
    context.route("**/vendor/chartjs/**", lambda route: route.fulfill(status=404, body="not installed"))
    add_session(context, server)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/")

    expect(page.locator(".chart-unavailable").first).to_contain_text("Charts are unavailable")
    expect(page.locator(".chart-unavailable")).to_have_count(3)
    expect(page.locator("#status")).to_contain_text("Live · 1 process", timeout=UPDATE_TIMEOUT_MS)
    before = predictions_total(page)
    send_predictions(server, api_key, count=1)
    expect(page.locator("#kpi-predictions-total")).to_have_text(f"{before + 1} since start", timeout=UPDATE_TIMEOUT_MS)
    page.screenshot(path=artifacts_dir() / "dashboard-without-charts.png")
    assert errors == []


def test_anonymous_visitors_and_users_who_are_not_staff_are_refused(server, new_context):
    page = new_context(**DESKTOP).new_page()
    response = page.goto(f"{server.url}/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    assert response.status == 200
    expect(page.locator("h1")).to_have_text("Log in to the live dashboard")
    page.screenshot(path=artifacts_dir() / "login-desktop-light.png")

    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator(".alert")).to_contain_text("correct username and password")

    page.fill("input[name=username]", "customer")
    page.fill("input[name=password]", PASSWORD)
    with page.expect_response(f"{server.url}/") as refused:
        page.click("button[type=submit]")
    assert refused.value.status == 403
    expect(page.locator("h1")).to_have_text("The dashboard is for staff")
    page.screenshot(path=artifacts_dir() / "forbidden-desktop-light.png")


def test_the_page_reconnects_by_itself_after_a_server_restart(start_daphne, new_context):
    first = start_daphne()
    create_user(first, "operator", staff=True)
    key = create_api_key(first, "restart-tests")
    problems = PageProblems()
    page = open_logged_in(new_context(**DESKTOP), first, problems=problems)
    expect(page.locator("#tryit-status")).to_contain_text("ready")
    send_predictions(first, key, count=5)
    expect(page.locator("#kpi-predictions-total")).to_have_text("5 since start", timeout=UPDATE_TIMEOUT_MS)

    first.stop()
    expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting", timeout=UPDATE_TIMEOUT_MS)
    expect(page.locator("#tryit-submit")).to_be_disabled()
    page.screenshot(path=artifacts_dir() / "dashboard-reconnecting.png")
    second = restart(first)
    try:
        # The new process starts from zero; the page finds it without a reload.
        expect(page.locator("#status")).to_contain_text("Live · 1 process", timeout=60_000)
        send_predictions(second, key, count=2)
        expect(page.locator("#kpi-predictions-total")).to_have_text("2 since start", timeout=UPDATE_TIMEOUT_MS)
        expect(page.locator("#tryit-status")).to_contain_text("ready", timeout=UPDATE_TIMEOUT_MS)
        page.click("#tryit-submit")
        expect(page.locator('[data-result="label"]')).to_be_visible()
    finally:
        second.stop()
    # A browser logs the failed reconnection attempts; nothing else may go wrong.
    assert [problem for problem in problems if "WebSocket" not in problem] == []
