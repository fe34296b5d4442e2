"""An operator's day in one story, in a real browser: an editor builds a job with two steps, runs
it with parameters, sees it fail, replays it with a changed value and watches it succeed, finds
it in the history and restores an older version; a viewer then sees no Run buttons and is
refused the run form. (Aborting a long run: test_run_live.)
"""

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.test_sign_in import sign_in, watch_console


def add_python_step(page: Page, index: int, name: str, code: str) -> None:
    page.get_by_label("New step").select_option("python")
    page.get_by_role("button", name="+ Add step").click()
    page.locator(f"#job-steps-{index}-name").fill(name)
    page.locator(f"textarea[name='steps-{index}.config.code']").fill(code)


@pytest.mark.usefixtures("engine")
def test_editor_builds_runs_watches_finds_and_restores_a_job_and_a_viewer_is_refused(
    page: Page, live_server, app
):
    problems = watch_console(page)
    sign_in(page, live_server, "eddie")
    page.get_by_role("link", name="New job").click()
    page.get_by_label("Id").fill("greeter")
    page.get_by_label("Description").fill("Greets someone")
    page.get_by_label("Cron", exact=True).check()
    page.locator("#job-schedule").fill("15 3 * * 1-5")
    preview = page.locator("#job-schedule-preview")
    expect(preview.locator("time")).to_have_count(5)  # the next five fires
    page.get_by_role("button", name="+ Add parameter").click()
    page.get_by_label("Name of parameter 1").fill("who")
    page.get_by_label("Default of parameter 1").fill("world")
    greet = "if ctx.params['who'] == 'nobody':\n    raise ValueError('nobody to greet')\n"
    add_python_step(page, 0, "greet", greet + "ctx.log.info('hello ' + ctx.params['who'])")
    add_python_step(page, 1, "answer", "ctx.set_output({'n': 42})")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("alert").first).to_contain_text("Created job greeter (version 1).")

    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_role("link", name="Run greeter with parameters").click()
    expect(page.get_by_label("who")).to_have_value("world")
    page.get_by_label("who").fill("nobody")
    page.get_by_role("button", name="▶ Run").click()
    expect(page.locator("[id$=-status]")).to_have_text("FAILED", timeout=15_000)
    page.get_by_role("link", name="Replay with changes").click()  # the failed run's values
    expect(page.get_by_label("who")).to_have_value("nobody")
    page.get_by_label("who").fill("Ada")
    page.get_by_role("button", name="▶ Run").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    run_path = page.url.removeprefix(live_server)
    expect(page.locator("[id$=-status]")).to_have_text("SUCCEEDED", timeout=15_000)
    expect(page.locator(".log-lines")).to_contain_text("hello Ada")

    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_label("Job").fill("greeter")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/runs\?job=greeter"))
    expect(page.locator(f"a[href='{run_path}']").first).to_be_visible()

    page.goto(live_server + "/jobs/greeter/edit")
    page.get_by_label("Description").fill("Greets someone, loudly")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("alert").first).to_contain_text("version 2")
    page.get_by_role("link", name="Versions", exact=True).click()
    page.get_by_role("button", name="Restore version 1").click()
    expect(page.get_by_role("alert").first).to_contain_text("Restored version 1 as version 3.")
    page.goto(live_server + "/jobs/greeter/edit")
    expect(page.get_by_label("Description")).to_have_value("Greets someone")
    assert problems == []

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, live_server, "vera")
    expect(page.locator("#job-greeter")).to_be_visible()
    expect(page.get_by_role("button", name="Run greeter now")).to_have_count(0)
    expect(page.get_by_role("link", name="Run greeter with parameters")).to_have_count(0)
    page.goto(live_server + "/jobs/greeter/run")
    expect(page.get_by_role("heading", name="403 · Not allowed")).to_be_visible()
