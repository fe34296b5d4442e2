"""Browser tests in real headless Chromium (Debian's /usr/bin/chromium, no browser download)."""

import shutil
import threading

import pytest
from werkzeug.serving import make_server

from app.engine.service import start_runner, stop_runner
from app.live import start_live_push, stop_live_push
from tests.conftest import IN_CI

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROME_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not shutil.which("chromium"):
        message = "Chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing service is a failure)")
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROME_ARGS}


@pytest.fixture
def engine(app):
    """This app's runner and live pushes, as `nomaflow serve` starts them."""
    start_runner(app)
    start_live_push(app)
    yield
    stop_live_push(app)
    stop_runner(app)


@pytest.fixture
def live_server(app):
    """Serve the app (HTTP and Socket.IO websockets) on a free port for the browser."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)
