"""An operator sees the bell count rise, live, when a failing run alerts an in-app channel."""

from playwright.sync_api import Page, expect

from app.alerts.channels import save_channel
from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch
from tests.e2e.test_catalogue_ui import open_catalogue
from tests.e2e.test_sign_in import watch_console
from tests.engine_helpers import make_job, python_step, wait_for_run


def test_the_bell_counts_a_failed_run_live_and_the_list_marks_it_read(
    page: Page, live_server, app, engine
):
    with app.app_context(), get_database(app).session_scope() as db:
        save_channel(db, vault(app), "bell", "in_app", {"roles": ["operator"]})
    alerts = {"channels": ["bell"], "on_failure": True}
    make_job(app, "flaky", [python_step("boom", "raise RuntimeError('no disk')")], alerts=alerts)
    problems = watch_console(page)
    # the bell refetches once every room (user:<id> among them) is joined: then nothing is missed
    with page.expect_response("**/notifications/bell"):
        open_catalogue(page, live_server, "otto")
    bell = page.locator("#notification-bell")
    expect(bell).to_have_attribute("aria-label", "Notifications: 0 unread")

    run = dispatch(get_database(app), vault(app), "flaky", "manual", None)
    wait_for_run(app, run.id)

    expect(bell).to_have_attribute("aria-label", "Notifications: 1 unread")  # no reload
    expect(page.locator("#notification-bell-count")).to_have_text("1")
    bell.click()
    expect(page.get_by_text(f"flaky: run #{run.id} FAILED")).to_be_visible()
    page.get_by_role("button", name=f"Mark read: flaky: run #{run.id} FAILED").click()
    expect(page.locator("#notification-bell")).to_have_attribute(
        "aria-label", "Notifications: 0 unread"
    )
    assert problems == []
