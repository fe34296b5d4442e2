"""A person watches the run history: new runs appear at the top while the page is open."""

from playwright.sync_api import Page, expect

from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch
from tests.e2e.test_sign_in import sign_in, watch_console
from tests.engine_helpers import make_job, python_step, wait_for_run


def test_a_new_run_appears_live_at_the_top_of_the_history(page: Page, live_server, app, engine):
    make_job(app, "quick", steps=[python_step("hi", "import time\ntime.sleep(0.5)")])
    first = dispatch(get_database(app), vault(app), "quick", "manual")
    wait_for_run(app, first.id)
    problems = watch_console(page)
    sign_in(page, live_server, "vera")
    page.goto(f"{live_server}/runs")
    expect(page.locator("#live-indicator")).to_have_text("live", timeout=10_000)
    rows = page.locator("#runs-unfiltered-tbody tr")
    expect(rows).to_have_count(1)
    run = dispatch(get_database(app), vault(app), "quick", "api")
    expect(rows.first).to_have_id(f"run-{run.id}-row", timeout=10_000)
    expect(rows).to_have_count(2)
    expect(page.locator(f"#run-{run.id}-row .state")).to_have_text("SUCCEEDED", timeout=10_000)
    page.get_by_label("State").select_option("FAILED")
    expect(page).to_have_url(f"{live_server}/runs?job=&state=FAILED&trigger=&user=&since=&until=")
    expect(page.locator("#runs-empty")).to_have_text("No runs match these filters.")
    assert problems == []
