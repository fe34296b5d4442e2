"""An editor adds a SQL connector in a browser, tests it and edits it; the password stays hidden."""

import re

from playwright.sync_api import Page, expect

from app.connectors.store import load_connector
from app.crypto import vault
from app.db import get_database
from tests.e2e.test_sign_in import sign_in, watch_console

PASSWORD = "e2e-Pa55word-never-in-html"
TEST_WAIT = 15_000  # a connection test may take the kind's timeout (10 s) on a busy machine


def test_an_editor_creates_tests_and_edits_a_sql_connector(
    page: Page, live_server, app, postgres_url
):
    problems = watch_console(page)
    bodies = []

    def keep_html(response):
        html = "text/html" in (response.headers.get("content-type") or "")
        if html and not 300 <= response.status < 400:  # a redirect has no body to read
            bodies.append(response.text())

    page.on("response", keep_html)
    sign_in(page, live_server, "eddie")
    page.get_by_role("link", name="Connectors").click()
    page.get_by_role("link", name="New connector").click()
    page.get_by_role("link", name="SQL database").click()
    page.get_by_label("Name").fill("warehouse")
    page.get_by_label("Description").fill("The reporting store")
    page.get_by_label("Url").fill(postgres_url)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Test connection").click()
    result = page.locator("#connector-test")
    expect(result).to_contain_text("✔ warehouse: connected: PostgreSQL", timeout=TEST_WAIT)
    page.get_by_role("button", name="Create connector").click()

    expect(page.get_by_role("alert")).to_have_text("Connector warehouse created.")
    row = page.locator("#connectors-table tr", has_text="warehouse")
    expect(row).to_contain_text("The reporting store")
    page.get_by_role("button", name="Test connection warehouse").click()
    expect(row.locator("[id$=-test]")).to_contain_text(
        re.compile(r"✔ warehouse: connected: PostgreSQL \d+"), timeout=TEST_WAIT
    )

    page.get_by_role("link", name="Edit warehouse").click()
    expect(page.locator("#connector-password-status")).to_have_text("set — leave empty to keep")
    expect(page.get_by_label("Password", exact=True)).to_have_value("")
    page.get_by_label("Description").fill("The reporting store (nightly)")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_have_text("Connector warehouse saved.")
    expect(row).to_contain_text("The reporting store (nightly)")
    page.get_by_role("button", name="Test connection warehouse").click()
    expect(row.locator("[id$=-test]")).to_contain_text("✔ warehouse: connected", timeout=TEST_WAIT)

    with app.app_context(), get_database(app).session_scope() as db_session:
        assert load_connector(db_session, vault(app), "warehouse").values["password"] == PASSWORD
    assert PASSWORD not in page.content()
    assert len(bodies) >= 6 and not [body for body in bodies if PASSWORD in body]
    assert problems == []
