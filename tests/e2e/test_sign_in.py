"""A person signs in with a real browser and sees the Jobs page go live."""

import re

from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD


def sign_in(page: Page, base: str, username: str, password: str = PASSWORD) -> None:
    page.goto(base + "/jobs")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def watch_console(page: Page) -> list[str]:
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def test_sign_in_shows_jobs_and_the_live_indicator_turns_live(page: Page, live_server):
    problems = watch_console(page)
    sign_in(page, live_server, "ada")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()  # signed in, at home
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    expect(page.locator("#jobs-empty")).to_contain_text("nomaflow jobs import")
    indicator = page.locator("#live-indicator")
    expect(indicator).to_have_text("live", timeout=10_000)
    expect(indicator).to_have_attribute("data-state", "live")
    transport = page.evaluate("() => window.nomaflowLive && window.nomaflowLive.transport()")
    assert transport == "websocket"
    expect(page.get_by_role("link", name="Admin")).to_be_visible()
    assert problems == []  # no CSP violation, no script error


def test_wrong_password_shows_the_error_and_keeps_the_username(page: Page, live_server):
    sign_in(page, live_server, "vera", "not-the-password")
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    expect(page.get_by_label("Username")).to_have_value("vera")
    expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")


def test_viewer_has_no_admin_link_and_sees_403_at_the_admin_url(page: Page, live_server):
    sign_in(page, live_server, "vera")
    expect(page.locator("#live-indicator")).to_have_text("live", timeout=10_000)
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    page.goto(live_server + "/admin/users")
    expect(page.get_by_role("heading", name="403 · Not allowed")).to_be_visible()


def test_admin_changes_a_role_in_place_with_htmx(page: Page, live_server):
    problems = watch_console(page)
    sign_in(page, live_server, "ada")
    page.get_by_role("link", name="Admin").click()
    expect(page).to_have_url(re.compile(r"/admin/users$"))
    expect(page.locator("#live-indicator")).to_have_text("live")  # htmx has read the page
    with page.expect_response(lambda r: "/admin/users/" in r.url and r.request.method == "POST"):
        page.get_by_label("Role of vera").select_option("operator")  # htmx saves on change
    expect(page.get_by_label("Role of vera")).to_have_value("operator")
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("#audit-table")).to_contain_text("user.update")
    expect(page.locator("#audit-table")).to_contain_text("role: ['viewer', 'operator']")
    assert problems == []


def test_sign_out_ends_the_session(page: Page, live_server):
    sign_in(page, live_server, "otto")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto(live_server + "/runs")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
