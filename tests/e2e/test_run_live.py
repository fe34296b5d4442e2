"""A person watches a run's log lines arrive live, filters them, and aborts a run."""

from playwright.sync_api import Page, expect

from tests.e2e.test_sign_in import sign_in, watch_console
from tests.engine_helpers import make_job, python_step, wait_for_run


def test_run_now_opens_the_run_page_and_lines_arrive_live(page: Page, live_server, app, engine):
    make_job(
        app,
        "ticker",
        steps=[
            python_step(
                "tick",
                """
import time
for i in range(1, 6):
    print(f"tick {i}")
    time.sleep(0.3)
ctx.log.warning("almost done")
ctx.log.debug("a debug detail")
""",
            )
        ],
        log_level="DEBUG",
    )
    problems = watch_console(page)
    sign_in(page, live_server, "otto")
    page.get_by_role("button", name="Run ticker now").click()
    expect(page.get_by_role("heading", name="Run #")).to_be_visible()
    expect(page.locator("#live-indicator")).to_have_text("live", timeout=10_000)
    log = page.locator(".log-lines")
    expect(log).to_contain_text("tick 1", timeout=10_000)
    expect(log).to_contain_text("tick 5", timeout=10_000)
    expect(page.locator("[id$=-status]")).to_have_text("SUCCEEDED", timeout=10_000)
    lines = log.locator(".log-line .message").all_inner_texts()
    ticks = [line for line in lines if line.startswith("tick")]
    assert ticks == [f"tick {i}" for i in range(1, 6)]  # every line once, in order
    seqs = [
        int(s) for s in log.locator(".log-line").evaluate_all("els => els.map(e => e.dataset.seq)")
    ]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    page.get_by_label("Warning+").check()
    expect(log.get_by_text("tick 1")).to_be_hidden()
    expect(log.get_by_text("almost done")).to_be_visible()
    expect(page.get_by_role("button", name="Replay")).to_be_visible()
    assert problems == []


def test_a_page_opened_mid_run_gets_earlier_lines_then_new_ones(
    page: Page, live_server, app, engine
):
    from app.crypto import vault
    from app.db import get_database
    from app.engine.dispatch import dispatch

    make_job(
        app,
        "slow",
        steps=[
            python_step(
                "count",
                """
import time
for i in range(1, 31):
    print(f"line {i}")
    time.sleep(0.1)
""",
            )
        ],
    )
    run = dispatch(get_database(app), vault(app), "slow", "manual")
    wait_for_run(app, run.id, states={"RUNNING"})
    sign_in(page, live_server, "vera")
    page.goto(f"{live_server}/runs/{run.id}")
    log = page.locator(".log-lines")
    expect(page.locator(f"#run-{run.id}-status")).to_have_text("SUCCEEDED", timeout=15_000)
    expect(log).to_contain_text("line 30")
    texts = [
        t for t in log.locator(".log-line .message").all_inner_texts() if t.startswith("line ")
    ]
    assert texts == [f"line {i}" for i in range(1, 31)]
    expect(page.get_by_role("button", name="Abort")).to_have_count(0)  # a viewer


def test_operator_aborts_a_running_run_from_its_page(page: Page, live_server, app, engine):
    make_job(
        app,
        "forever",
        steps=[python_step("wait", "import time\nprint('waiting')\ntime.sleep(600)")],
    )
    sign_in(page, live_server, "otto")
    page.get_by_role("button", name="Run forever now").click()
    expect(page.locator(".log-lines")).to_contain_text("waiting", timeout=10_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Abort").click()
    expect(page.locator("[id$=-status]")).to_have_text("CANCELED", timeout=8_000)
