"""Personal API tokens: `nomaflow tokens ...` on a real instance, and the /account/tokens page."""

import re

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from app.cli import main
from app.db import get_database
from app.models import ApiToken, AuditEvent
from tests.conftest import csrf_token


@pytest.fixture
def cli(app):
    """Run `nomaflow ...` in-process against the test app's instance folder and database."""
    settings = app.config["NOMAFLOW"]
    env = {
        "NOMAFLOW_INSTANCE": str(settings.instance_path),
        "NOMAFLOW_SCHEDULER_ENABLED": "false",
        "NOMAFLOW_DATABASE_URL": settings.database_url,
    }

    def run(*args, **extra_env):
        return CliRunner().invoke(main, list(args), env={**env, **extra_env})

    return run


def test_tokens_create_prints_a_token_that_opens_the_api_once_stored_hashed(app, cli):
    result = cli("tokens", "create", "otto", "--name", "ci deploys")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert re.fullmatch(r"nf_[A-Za-z0-9_-]{43}", token)
    client = app.test_client()
    response = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    with get_database(app).session_scope() as db:
        stored = db.scalar(sa.select(ApiToken))
        assert (stored.name, stored.prefix) == ("ci deploys", token[:11])
        assert token not in (stored.token_hash, stored.prefix)
        assert stored.last_used_at is not None
        event = db.scalar(sa.select(AuditEvent).where(AuditEvent.action == "token.create"))
        assert (event.username, event.detail["owner"]) == ("cli", "otto")

    listed = cli("tokens", "list", "otto")
    assert "ci deploys" in listed.stdout and token[:11] in listed.stdout
    assert token not in listed.stdout
    revoked = cli("tokens", "revoke", str(stored.id))
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    again = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 401


def test_tokens_create_for_an_unknown_user_exits_2_with_one_line(cli):
    result = cli("tokens", "create", "nobody")
    assert result.exit_code == 2
    assert result.stderr == "nomaflow: no user named 'nobody'\n"
    assert cli("tokens", "revoke", "12345").exit_code == 2


def test_tokens_create_exits_3_when_the_database_is_unreachable(cli):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    result = cli("tokens", "create", "otto", NOMAFLOW_DATABASE_URL=url)
    assert result.exit_code == 3
    assert result.stderr.startswith("nomaflow: cannot reach the database")


def test_tokens_page_shows_a_new_token_once_and_revokes_with_htmx(app, as_user):
    vera = as_user("vera")
    form = {"name": "laptop", "csrf_token": csrf_token(vera, "/account/tokens")}
    page = vera.post("/account/tokens", data=form).get_data(as_text=True)
    token = re.search(r'id="new-token-value"[^>]*value="(nf_[^"]+)"', page).group(1)
    headers = {"Authorization": f"Bearer {token}"}
    assert app.test_client().get("/api/v1/jobs", headers=headers).status_code == 200
    listing = vera.get("/account/tokens").get_data(as_text=True)
    assert token not in listing and token[:11] in listing and "laptop" in listing

    with get_database(app).session_scope() as db:
        token_id = db.scalar(sa.select(ApiToken.id))
    otto = as_user("otto")
    not_theirs = otto.post(
        f"/account/tokens/{token_id}/revoke",
        data={"csrf_token": csrf_token(otto, "/account/tokens")},
    )
    assert not_theirs.status_code == 404
    row = vera.post(
        f"/account/tokens/{token_id}/revoke",
        data={"csrf_token": csrf_token(vera, "/account/tokens")},
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    assert row.startswith(f'<tr id="token-{token_id}"') and "revoked" in row
    assert app.test_client().get("/api/v1/jobs", headers=headers).status_code == 401


def test_the_api_page_lists_the_endpoints_and_links_to_the_tokens(as_user):
    vera = as_user("vera")
    page = vera.get("/help/api").get_data(as_text=True)
    assert ">API</a>" in vera.get("/jobs").get_data(as_text=True)
    assert "/api/v1/jobs/{job_id}/runs" in page and 'href="/account/tokens"' in page
    assert vera.get("/help/api/openapi.json").get_json()["openapi"].startswith("3.")
