"""ctx.sql and ctx.http in the python step, through the engine, against real databases
(SQLite, PostgreSQL) and a real local HTTP API: transactions, auth, unknown names, masking."""

from __future__ import annotations

import base64
import json
import uuid
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa

from app.connectors.store import save_connector
from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch
from app.engine.service import start_runner, stop_runner
from app.jobs_io import import_jobs
from app.steps.python import PythonStep, connector_calls
from app.steps.python_pool import shutdown_python_workers
from app.steps.python_worker import MASK, Masker
from tests.engine_helpers import log_messages, make_job, python_step, wait_for_run
from tests.http_test_server import (
    BEARER_TOKEN,
    CLIENT_SECRET,
    PASSWORD,
    USERNAME,
    HttpTestServer,
    http_values,
)

DB_PASSWORD = "Db-S3cret/p@ss:w%rd"  # every character a URL has to quote


@pytest.fixture(scope="module", autouse=True)
def fork_servers_stopped_after():
    yield
    shutdown_python_workers()


@pytest.fixture
def runner(app):
    started = start_runner(app)
    yield started
    stop_runner(app)


@pytest.fixture
def api():
    server = HttpTestServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path):
    """An empty table ``items`` on SQLite or PostgreSQL; its URL and an engine to check it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'target.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    table = f"items_{uuid.uuid4().hex[:8]}"  # the PostgreSQL database lives for the session
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE {table} (id integer PRIMARY KEY, name text)")
    yield url, table, engine
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP TABLE {table}")
    engine.dispose()


def add_connector(app, name: str, kind: str, values: dict) -> None:
    with get_database(app).session_scope() as db:
        save_connector(db, vault(app), name, kind, values)


def run_job(app, job_id: str, steps: list[dict], values=None, **job_fields) -> dict:
    make_job(app, job_id, steps=steps, **job_fields)
    run = dispatch(get_database(app), vault(app), job_id, "manual", values)
    return wait_for_run(app, run.id, timeout=60)


def messages(app, run_id: int) -> list[str]:
    return [message for _, _, message in log_messages(app, run_id)]


def rows(engine: sa.Engine, table: str) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1")]


# --- ctx.sql ---------------------------------------------------------------------------------


def test_ctx_sql_commits_a_block_that_ends_and_rolls_back_one_that_raises(app, runner, target):
    url, table, engine = target
    add_connector(app, "ops", "sql", {"url": url})
    document = run_job(
        app,
        "writer",
        [
            python_step(
                "write",
                "from sqlalchemy import text\n"
                "with ctx.sql('ops') as db:\n"
                f"    db.execute(text('INSERT INTO {table} (id, name) VALUES (:id, :name)'),\n"
                "               [{'id': 1, 'name': 'one'}, {'id': 2, 'name': 'two'}])\n"
                f"    db.exec_driver_sql(\"INSERT INTO {table} (id, name) VALUES (3, 'three')\")\n"
                f"    n = db.execute(text('SELECT count(*) FROM {table}')).scalar_one()\n"
                "ctx.set_output({'seen': n, 'dialect': db.dialect.name})\n",
            ),
            python_step(
                "half-write",
                "with ctx.sql('ops') as db:\n"
                f"    db.exec_driver_sql(\"INSERT INTO {table} (id, name) VALUES (4, 'four')\")\n"
                "    raise ValueError('changed my mind')\n",
            ),
        ],
    )
    assert document["state"] == "FAILED"
    write, half = document["steps"]
    assert write["state"] == "SUCCEEDED"
    assert write["output"] == {"seen": 3, "dialect": engine.dialect.name}
    assert half["error"] == "ValueError: changed my mind"
    assert rows(engine, table) == [(1, "one"), (2, "two"), (3, "three")]  # 4 rolled back


def test_the_default_connector_is_the_app_database(app, runner):
    document = run_job(
        app,
        "count-jobs",
        [
            python_step(
                "count",
                "with ctx.sql('default') as db:\n"
                "    ctx.set_output(db.exec_driver_sql('SELECT id FROM jobs').scalars().all())\n",
            )
        ],
    )
    assert document["state"] == "SUCCEEDED"
    assert document["steps"][0]["output"] == ["count-jobs"]


def test_ctx_sql_used_without_with_says_how(app, runner, tmp_path):
    add_connector(app, "ops", "sql", {"url": f"sqlite:///{tmp_path / 'x.db'}"})
    document = run_job(
        app, "no-with", [python_step("oops", "db = ctx.sql('ops')\ndb.exec_driver_sql('SELECT 1')")]
    )
    assert document["state"] == "FAILED"
    error = document["steps"][0]["error"]
    assert error.startswith("AttributeError: ctx.sql('ops') has no 'exec_driver_sql'")
    assert "with ctx.sql('ops') as db:" in error


# --- ctx.http --------------------------------------------------------------------------------


def test_ctx_http_gets_json_with_the_connectors_bearer_token(app, runner, api):
    add_connector(app, "api", "http", http_values(api, "bearer", timeout_seconds=7))
    document = run_job(
        app,
        "pull",
        [
            python_step(
                "get",
                "api = ctx.http('api')\n"
                "who = api.get('/bearer')\n"
                "who.raise_for_status()\n"
                "echo = api.post('echo/x', json={'n': 1}, params={'q': 'v'}).json()\n"
                "ctx.set_output({'who': who.json(), 'path': echo['path'], 'json': echo['json'],\n"
                "                'query': echo['query'], 'base': api.base_url})\n",
            )
        ],
    )
    assert document["state"] == "SUCCEEDED", document
    assert document["steps"][0]["output"] == {
        "who": {"user": "bearer-client"},
        "path": "/echo/x",
        "json": {"n": 1},
        "query": {"q": ["v"]},
        "base": api.url,
    }
    assert api.requests_to("/bearer")[0].headers["Authorization"] == f"Bearer {BEARER_TOKEN}"
    assert api.requests_to("/echo/x")[0].headers["Authorization"] == f"Bearer {BEARER_TOKEN}"


def test_ctx_http_fetches_an_oauth2_token_and_masks_it(app, runner, api):
    add_connector(app, "api", "http", http_values(api, "oauth2"))
    document = run_job(
        app,
        "oauth",
        [
            python_step(
                "get",
                "r = ctx.http('api').get('/oauth/data')\n"
                "print('sent', r.request.headers['Authorization'])\n"
                "ctx.set_output(len(r.json()['items']))\n",
            )
        ],
    )
    assert document["state"] == "SUCCEEDED", document
    assert document["steps"][0]["output"] == 2
    assert api.token_requests == 1 and len(api.tokens) == 1
    lines = messages(app, document["id"])
    assert f"sent Bearer {MASK}" in lines
    assert not [t for t in [*api.tokens, CLIENT_SECRET] if t in "\n".join(lines)]


# --- names the step cannot resolve -----------------------------------------------------------


def test_an_unknown_connector_fails_the_step_before_the_code_runs(app, runner, tmp_path):
    add_connector(app, "ops", "sql", {"url": f"sqlite:///{tmp_path / 'x.db'}"})
    document = run_job(
        app,
        "misnamed",
        [
            python_step("missing", "print('ran')\nctx.sql('nope')", on_failure="continue"),
            python_step("kind", "print('ran')\nctx.http('ops')", on_failure="continue"),
            python_step("listed", "print('ran')", connectors=["ghost"]),
        ],
    )
    assert [s["error"] for s in document["steps"]] == [
        "ctx.sql('nope'): no connector named 'nope'",
        "ctx.http('ops'): connector 'ops' is sql, not http",
        "connectors: no connector named 'ghost'",
    ]
    assert "ran" not in messages(app, document["id"])


def test_a_dynamic_name_must_be_listed_and_then_works(app, runner, tmp_path):
    add_connector(app, "ops", "sql", {"url": f"sqlite:///{tmp_path / 'x.db'}"})
    code = (
        "name = ctx.params['db']\n"
        "with ctx.sql(name) as db:\n"
        "    ctx.set_output(db.exec_driver_sql('SELECT 41 + 1').scalar())\n"
    )
    params = [{"name": "db", "type": "connector", "default": "ops"}]
    unlisted = run_job(app, "dynamic", [python_step("q", code)], params=params)
    assert unlisted["state"] == "FAILED"
    assert unlisted["steps"][0]["error"] == (
        "RuntimeError: ctx.sql('ops'): connector 'ops' was not given to this step. The step "
        'finds the connectors its code uses in calls such as ctx.sql("ops"), with the name '
        "written as a string literal; name it so, or list it in the step's `connectors` field "
        '(connectors = ["ops"])'
    )
    listed = run_job(
        app,
        "dynamic-listed",
        [python_step("q", code, connectors=["{{ params.db }}"])],
        params=params,
    )
    assert listed["state"] == "SUCCEEDED", listed
    assert listed["steps"][0]["output"] == 42


def test_a_callable_gets_the_connectors_listed_in_the_step(app, runner, api):
    add_connector(app, "api", "http", http_values(api, "bearer"))
    plugins = app.config["NOMAFLOW"].instance_path / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "pulls.py").write_text(
        "def run(ctx):\n    return ctx.http('api').get('/bearer').json()\n"
    )
    document = run_job(
        app,
        "plugin",
        [{"name": "pull", "type": "python", "callable": "pulls:run", "connectors": ["api"]}],
    )
    assert document["state"] == "SUCCEEDED", document
    assert document["steps"][0]["output"] == {"user": "bearer-client"}


# --- secrets ---------------------------------------------------------------------------------


def test_a_connector_password_never_reaches_the_log_or_the_run(app, runner, api, postgres_url):
    # PostgreSQL on 127.0.0.1 trusts the connection: the password is carried, never checked
    add_connector(app, "ops", "sql", {"url": postgres_url, "password": DB_PASSWORD})
    add_connector(app, "api", "http", http_values(api, "basic"))
    code = (
        "import subprocess, sys\n"
        "with ctx.sql('ops') as db:\n"
        "    db.exec_driver_sql('SELECT 1')\n"
        "    url = db.engine.url.render_as_string(hide_password=False)\n"
        "    password = db.engine.url.password\n"
        "try:\n"
        "    raise ConnectionError(f'cannot reach {url}')\n"
        "except ConnectionError as error:\n"
        "    print(error)\n"
        "    ctx.log.warning(repr(error))\n"
        "print('raw', password, 'quoted', url.split('@')[0])\n"
        "sys.stderr.write(f'stderr {password}\\n')\n"
        "subprocess.run(['echo', 'child process', password], check=True)\n"
        "print('long', 'x' * 8180 + password)\n"
        "print('sent', ctx.http('api').get('/basic').request.headers)\n"
        "raise RuntimeError(f'giving up on {url} ({password})')\n"
    )
    document = run_job(app, "leaky", [python_step("leak", code)])
    assert document["state"] == "FAILED"
    lines = messages(app, document["id"])
    seen = "\n".join(lines) + json.dumps(document)
    forms = [DB_PASSWORD, quote(DB_PASSWORD, safe=""), quote_plus(DB_PASSWORD), "p%40ss%3Aw%25rd"]
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    assert [f for f in [*forms, PASSWORD, basic] if f in seen] == []
    assert DB_PASSWORD[:5] not in seen  # not even the start of it, cut at 8 KB
    assert any(m.startswith(f"cannot reach postgresql+psycopg://postgres:{MASK}@") for m in lines)
    assert f"stderr {MASK}" in lines and f"child process {MASK}" in lines
    assert any(m.startswith("sent {") and f"Basic {MASK}" in m for m in lines)
    assert document["steps"][0]["error"].startswith("RuntimeError: giving up on postgresql")
    assert document["steps"][0]["error"].endswith(f"({MASK})")


# --- the parts, without the engine -----------------------------------------------------------


def test_connector_calls_finds_literal_names_on_ctx_only():
    code = (
        "import duckdb\n"
        "duckdb.sql('SELECT 1')\n"
        "with ctx.sql('ops') as db: pass\n"
        "ctx.http(connector='github').get('/')\n"
        "ctx.sql(f'{x}')\n"
        "ctx.sql(name)\n"
        "def helper(ctx):\n"
        "    return ctx.sql('reporting')\n"
        "ctx.sql('ops')\n"
    )
    assert connector_calls(code) == (("ops", "sql"), ("github", "http"), ("reporting", "sql"))


def test_the_connectors_field_is_validated():
    step = PythonStep()
    assert step.validate({"code": "pass", "connectors": ["ops", "{{ params.db }}"]}) == {}
    assert step.validate({"code": "pass", "connectors": "ops"}) == {
        "connectors": 'expected a list of connector names, e.g. ["ops", "github"]'
    }
    assert step.validate({"code": "pass", "connectors": ["no spaces"]}) == {
        "connectors": "'no spaces' is not a connector name "
        "(letters, digits, dots, dashes, underscores)"
    }


def test_an_import_checks_the_connectors_the_code_names(app):
    text = (
        '[[jobs]]\nid = "uses-ops"\n[[jobs.steps]]\nname = "w"\ntype = "python"\n'
        "code = \"with ctx.sql('ops') as db: pass\"\n"
    )
    with get_database(app).session_scope() as db:
        result = import_jobs(db, text, dry_run=True)
    assert [str(e) for e in result.errors] == [
        "jobs[0] uses-ops › steps[0] w › code: no sql connector named 'ops'"
    ]


def test_the_masker_hides_every_secret_and_a_cut_tail():
    masker = Masker(["s3cret-value", "abc"])  # too short to mask: it would hide words
    assert masker.mask("a s3cret-value b abc") == f"a {MASK} b abc"
    cut = "x" * 10 + "s3cr" + " … (line cut at 8 KB)"
    assert masker.mask(cut) == "x" * 10 + MASK + " … (line cut at 8 KB)"
    assert not Masker([])
