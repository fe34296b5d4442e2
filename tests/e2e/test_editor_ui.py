"""A person creates a job with two steps in the editor, sees the cron preview, saves, runs it."""

from playwright.sync_api import Page, expect

from tests.e2e.test_sign_in import sign_in, watch_console


def test_create_a_job_with_two_steps_preview_the_cron_save_and_run_it(
    page: Page, live_server, app, engine
):
    problems = watch_console(page)
    sign_in(page, live_server, "ada")
    page.goto(live_server + "/jobs/new")
    page.get_by_label("Id").fill("browser-made")
    page.get_by_label("Description").fill("Made in the browser")
    page.get_by_label("Cron", exact=True).check()
    page.get_by_label("Timezone").fill("Asia/Tokyo")
    cron = page.locator("#job-schedule")
    cron.fill("61 * * * *")
    preview = page.locator("#job-schedule-preview")
    expect(preview.locator(".error")).to_contain_text("schedule:")
    cron.fill("30 2 * * *")
    expect(preview.locator("time")).to_have_count(5)
    expect(preview).to_contain_text("JST")

    page.get_by_label("New step").select_option("python")
    page.get_by_role("button", name="+ Add step").click()
    page.locator("#job-steps-0-name").fill("greet")
    page.locator("textarea[name='steps-0.config.code']").fill("ctx.log.info('hello from step 1')")
    page.get_by_role("button", name="+ Add step").click()
    page.locator("#job-steps-1-name").fill("answer")
    page.locator("textarea[name='steps-1.config.code']").fill("ctx.set_output({'n': 42})")
    move_up = page.locator("#job-step-1").get_by_role("button", name="▲ Move up")
    move_up.focus()
    page.keyboard.press("Enter")  # plain buttons: the keyboard reorders too
    expect(page.locator("#job-steps-0-name")).to_have_value("answer")
    page.get_by_role("button", name="Save", exact=True).click()

    expect(page.get_by_role("alert").first).to_contain_text("Created job browser-made (version 1).")
    assert problems == []  # the editor's pages: no CSP violation, no script error
    page.get_by_role("button", name="Run browser-made now").click()
    expect(page.get_by_role("heading", name="Run #")).to_be_visible()
    expect(page.locator("[id$=-status]")).to_have_text("SUCCEEDED", timeout=15_000)
    expect(page.locator(".log-lines")).to_contain_text("hello from step 1", timeout=10_000)
