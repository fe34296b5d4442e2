"""An operator finds a job in the catalogue and runs it with parameters in a real browser."""

import re

from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD
from tests.e2e.test_sign_in import watch_console
from tests.engine_helpers import make_job, python_step


def open_catalogue(page: Page, base: str, username: str) -> None:
    """Sign in from /jobs, so the login sends the browser back to the catalogue."""
    page.goto(base + "/jobs")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(base + "/jobs")


def test_operator_runs_a_job_with_parameters_and_watches_it_succeed(
    page: Page, live_server, app, engine
):
    make_job(
        app,
        "greet",
        description="Say hello to someone",
        tags=["demo"],
        params=[
            {"name": "who", "type": "string", "default": "world"},
            {"name": "times", "type": "int", "default": 1},
            {"name": "loud", "type": "bool"},
            {"name": "mode", "type": "choice", "choices": ["plain", "fancy"], "default": "plain"},
        ],
        steps=[
            python_step(
                "hello",
                "p = ctx.params\n"
                "for _ in range(p['times']):\n"
                "    print(('HELLO ' if p['loud'] else 'hello ') + p['who'] + ' ' + p['mode'])",
            ),
            python_step("never", "raise SystemExit('left out of this fire')"),
        ],
    )
    problems = watch_console(page)
    open_catalogue(page, live_server, "otto")
    page.get_by_role("link", name="Run greet with parameters").click()
    expect(page.get_by_role("heading", name="Run greet with parameters")).to_be_visible()
    expect(page.get_by_label("who")).to_have_value("world")
    page.get_by_label("who").fill("Ada")
    page.get_by_label("times").fill("2")
    page.get_by_label("loud").check()
    page.get_by_label("mode").select_option("fancy")
    page.get_by_label("Log level").select_option("DEBUG")
    page.get_by_label("never").uncheck()
    page.get_by_role("button", name="▶ Run").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    expect(page.locator("[id$=-status]")).to_have_text("SUCCEEDED", timeout=15_000)
    expect(page.locator(".log-lines")).to_contain_text("HELLO Ada fancy")
    assert problems == []


def test_search_as_you_type_and_tag_chips_update_the_rows_and_the_address(
    page: Page, live_server, app
):
    make_job(app, "nightly-copy", description="Copy the shop database", tags=["etl"])
    make_job(app, "hourly-pull", description="Pull orders", tags=["api"])
    problems = watch_console(page)
    open_catalogue(page, live_server, "vera")
    rows = page.locator("#jobs-table tbody tr")
    expect(rows).to_have_count(2)
    page.get_by_label("Search jobs").press_sequentially("shop", delay=30)
    expect(rows).to_have_count(1)
    expect(page.locator("#job-nightly-copy")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/jobs\?q=shop$"))
    page.get_by_label("Search jobs").fill("")
    expect(rows).to_have_count(2)
    page.get_by_role("link", name="api", exact=True).click()
    expect(rows).to_have_count(1)
    expect(page.locator("#job-hourly-pull")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/jobs\?tag=api$"))
    assert problems == []


def test_editor_switches_a_job_off_in_place(page: Page, live_server, app):
    make_job(app, "hourly", interval="1h")
    open_catalogue(page, live_server, "eddie")
    switch = page.get_by_role("switch", name="Enabled hourly")
    expect(switch).to_have_attribute("aria-checked", "true")
    switch.click()
    expect(page.get_by_role("switch", name="Enabled hourly")).to_have_attribute(
        "aria-checked", "false"
    )
    expect(page.locator("#job-hourly")).to_contain_text("paused")
    expect(page).to_have_url(live_server + "/jobs")  # swapped in place, no page load


def test_a_running_job_row_updates_live_without_a_reload(page: Page, live_server, app, engine):
    from app.crypto import vault
    from app.db import get_database
    from app.engine.dispatch import dispatch

    make_job(app, "slow-sync", steps=[python_step("wait", "import time\ntime.sleep(2.5)")])
    make_job(app, "other")
    problems = watch_console(page)
    open_catalogue(page, live_server, "vera")
    expect(page.locator("#live-indicator")).to_have_text("live", timeout=10_000)
    page.evaluate("() => { window.sameDocument = true; }")  # gone if the page reloads
    row = page.locator("#job-slow-sync")
    expect(row).to_contain_text("never run")
    dispatch(get_database(app), vault(app), "slow-sync", "manual")  # someone else runs it
    expect(row.locator(".state")).to_have_text("RUNNING", timeout=10_000)
    expect(row).to_contain_text("on step wait")
    expect(row.locator(".state")).to_have_text("SUCCEEDED", timeout=10_000)
    expect(row.locator("svg.sparkline path")).to_have_count(1)
    expect(page.locator("#job-other")).to_contain_text("never run")
    assert page.evaluate("() => window.sameDocument") is True
    expect(page.get_by_role("button", name="Run slow-sync now")).to_have_count(0)  # a viewer
    assert problems == []
