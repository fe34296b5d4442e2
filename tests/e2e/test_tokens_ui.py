"""A person makes an API token in the browser, uses it from a script, and revokes it."""

import requests
from playwright.sync_api import Page, expect

from tests.e2e.test_sign_in import sign_in, watch_console


def test_create_a_token_see_it_once_use_it_and_revoke_it(page: Page, live_server):
    problems = watch_console(page)
    sign_in(page, live_server, "otto")
    page.get_by_role("link", name="API", exact=True).click()
    expect(page.get_by_role("heading", name="REST API")).to_be_visible()
    page.get_by_role("link", name="Create or revoke your API tokens").click()
    page.get_by_label("Name").fill("deploy script")
    page.get_by_role("button", name="Create token").click()
    field = page.get_by_label("Token", exact=True)
    token = field.input_value()
    assert token.startswith("nf_")

    api = f"{live_server}/api/v1/jobs"
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(api, headers=auth, timeout=10).status_code == 200

    page.goto(f"{live_server}/account/tokens")
    expect(page.get_by_label("Token", exact=True)).to_have_count(0)  # shown once only
    row = page.locator("#tokens-table tbody tr", has_text="deploy script")
    expect(row).to_contain_text(token[:11])
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke deploy script").click()
    expect(row).to_contain_text("revoked")
    response = requests.get(api, headers=auth, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert problems == []
