"""The layout on a phone (375 px: no sideways scrolling) and in dark mode, with visible focus."""

from playwright.sync_api import Page, expect

from tests.e2e.test_sign_in import sign_in, watch_console
from tests.engine_helpers import make_job, python_step
from tests.test_history import add_runs

PHONE = {"width": 375, "height": 740}


WIDER_THAN_THE_SCREEN = """() => {
  if (document.documentElement.scrollWidth <= window.innerWidth + 1) return [];
  return Array.from(document.querySelectorAll("main *, header *"))
    .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
    .slice(0, 5).map((el) => el.tagName + "#" + el.id + "." + el.className);
}"""


def test_pages_fit_a_phone_and_dark_mode_darkens_them(page: Page, live_server, app):
    make_job(
        app,
        "a-job-with-a-rather-long-identifier-for-a-phone",
        description="A description long enough to wrap on a small screen, twice over at least",
        tags=["etl", "nightly", "shop"],
        schedule="30 2 * * *",
        steps=[python_step("hello", "print('a line of code that is long ' * 4)")],
    )
    (run_id,) = add_runs(
        app, [{"job": "a-job-with-a-rather-long-identifier-for-a-phone", "state": "FAILED"}]
    )
    problems = watch_console(page)
    page.set_viewport_size(PHONE)
    sign_in(page, live_server, "eddie")
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    for path in (
        "/jobs",
        "/runs",
        f"/runs/{run_id}",
        "/jobs/a-job-with-a-rather-long-identifier-for-a-phone/edit",
        "/schedule",
        "/",
    ):
        page.goto(live_server + path)
        expect(page.locator("main")).to_be_visible()
        assert page.evaluate(WIDER_THAN_THE_SCREEN) == [], path

    light = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    page.goto(live_server + "/jobs")
    dark = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert light == "rgb(246, 247, 249)" and dark == "rgb(15, 20, 28)"
    card = page.locator(".table").first
    assert card.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(22, 29, 40)"

    page.keyboard.press("Tab")  # the first link of the page takes the focus, visibly
    outline = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [document.activeElement.tagName, s.outlineStyle, s.outlineWidth]; }"
    )
    assert outline == ["A", "solid", "2px"]
    assert problems == []
