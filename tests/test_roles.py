"""Roles: admins shape them; a role limited to job tags sees and runs only its team's jobs."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.db import get_database, utcnow
from app.engine.signals import run_changed
from app.live import socketio, start_live_push, stop_live_push
from app.models import AuditEvent, Job, Role, Run, User
from app.roles import RoleError, create_role, update_role
from app.users import UserError, update_user
from tests.conftest import PASSWORD, PASSWORD_HASH, csrf_token, sign_in
from tests.engine_helpers import make_job, python_step
from tests.test_api import Api
from tests.test_editor import new_job_form
from tests.test_history import add_runs


def make_role(admin, name: str, permissions: list[str], tags: str = ""):
    data = {
        "name": name,
        "description": f"{name} people",
        "permissions": permissions,
        "job_tags": tags,
        "csrf_token": csrf_token(admin, "/admin/roles"),
    }
    return admin.post("/admin/roles", data=data)


def make_member(app, admin, username: str, role: str):
    data = {
        "username": username,
        "role": role,
        "password": PASSWORD,
        "csrf_token": csrf_token(admin, "/admin/users"),
    }
    assert admin.post("/admin/users", data=data).status_code == 200
    member = app.test_client()
    assert sign_in(member, username).status_code == 302
    return member


def role_id(app, name: str) -> int:
    with get_database(app).session_scope() as db:
        return db.scalar(sa.select(Role.id).where(Role.name == name))


@pytest.fixture
def teams(app, as_user):
    """Two teams' jobs with runs, and dana, whose role sees only jobs tagged team-data."""
    admin = as_user("ada")
    assert make_role(admin, "data-team", ["job:view", "job:run"], "team-data").status_code == 302
    make_job(app, "data-load", tags=["team-data", "nightly"], schedule="0 * * * *")
    make_job(app, "ops-backup", tags=["ops"], schedule="30 * * * *")
    now = utcnow()
    runs = add_runs(
        app,
        [
            {"job": "data-load", "state": "FAILED", "queued_at": now - timedelta(hours=1)},
            {"job": "ops-backup", "state": "FAILED", "queued_at": now - timedelta(hours=1)},
            {"job": "ops-backup", "state": "RUNNING", "queued_at": now, "started_at": now},
        ],
    )
    dana = make_member(app, admin, "dana", "data-team")
    return {
        "admin": admin,
        "dana": dana,
        "data_run": runs[0],
        "ops_run": runs[1],
        "ops_running": runs[2],
    }


def test_a_team_role_sees_only_its_jobs_everywhere(teams):
    dana = teams["dana"]
    for path in ("/jobs", "/runs", "/", "/schedule"):
        page = dana.get(path).get_data(as_text=True)
        assert "data-load" in page, path
        assert "ops-backup" not in page, path
    runs_page = dana.get("/runs").get_data(as_text=True)
    assert f'href="/runs/{teams["data_run"]}"' in runs_page
    assert f'href="/runs/{teams["ops_run"]}"' not in runs_page
    assert "ops-backup" not in dana.get("/runs?state=FAILED").get_data(as_text=True)
    # another team's run, log, run form and presets answer 404, as if they did not exist
    ops_run = teams["ops_run"]
    for path in (f"/runs/{ops_run}", f"/runs/{ops_run}/log.txt", f"/runs/{ops_run}/actions",
                 "/jobs/ops-backup/run", "/jobs/ops-backup/row"):  # fmt: skip
        assert dana.get(path).status_code == 404, path
    assert dana.get(f"/runs/{teams['data_run']}").status_code == 200
    assert dana.get(f"/runs/{teams['data_run']}/log.txt").status_code == 200
    # the admin still sees both teams
    admin_runs = teams["admin"].get("/runs").get_data(as_text=True)
    assert "ops-backup" in admin_runs and "data-load" in admin_runs


def test_a_team_member_cannot_trigger_abort_or_replay_another_teams_job(app, teams):
    dana = teams["dana"]
    token = csrf_token(dana, "/jobs")
    with get_database(app).session_scope() as db:
        before = db.scalar(sa.select(sa.func.count()).select_from(Run))
    ops_run = teams["ops_run"]
    for path in ("/jobs/ops-backup/run-now", "/jobs/ops-backup/run",
                 f"/runs/{ops_run}/replay", f"/runs/{teams['ops_running']}/abort"):  # fmt: skip
        assert dana.post(path, data={"csrf_token": token}).status_code == 404, path
    # nor through the row of a job of its own
    cancel = f"/jobs/data-load/runs/{teams['ops_running']}/cancel"
    assert dana.post(cancel, data={"csrf_token": token}).status_code == 404
    with get_database(app).session_scope() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(Run)) == before
        assert db.get(Run, teams["ops_running"]).cancel_requested_at is None
    started = dana.post("/jobs/data-load/run-now", data={"csrf_token": token})
    assert started.status_code == 302 and started.headers["Location"].startswith("/runs/")


def test_a_team_editor_keeps_jobs_in_the_team(app, as_user):
    admin = as_user("ada")
    make_role(admin, "data-editors", ["job:view", "job:edit", "python:edit"], "team-data")
    make_job(app, "ops-backup", tags=["ops"])
    editor = make_member(app, admin, "erin", "data-editors")
    assert editor.get("/jobs/ops-backup/edit").status_code == 404
    assert editor.get("/jobs/ops-backup/versions").status_code == 404
    assert editor.get("/jobs/new?duplicate=ops-backup").status_code == 404
    form = new_job_form(editor, id="stray", tags="ops")
    refused = editor.post("/jobs/new", data=form)
    assert refused.status_code == 422
    assert "your role may only edit jobs tagged team-data" in refused.get_data(as_text=True)
    created = editor.post("/jobs/new", data={**form, "id": "mine", "tags": "team-data, etl"})
    assert created.status_code == 302
    assert "mine" in editor.get("/jobs").get_data(as_text=True)


@pytest.fixture
def erin(app, as_user):
    """A team editor (job:edit and job:run, limited to team-data), and ops' secret job."""
    admin = as_user("ada")
    make_role(admin, "data-editors", ["job:view", "job:edit", "job:run"], "team-data")
    make_job(app, "ops-secret", tags=["ops"], steps=[python_step("s", "ctx.set_output(1)")])
    make_job(app, "data-load", tags=["team-data"])
    return make_member(app, admin, "erin", "data-editors")


def calling_form(client, job: str, **overrides):
    """The editor's form for a new team job whose one step calls ``job``."""
    form = new_job_form(client, id="steal", tags="team-data")
    form = {key: value for key, value in form.items() if not key.startswith("steps-")}
    step = {"name": "call", "type": "call_job", "enabled": "true", "config.job": job}
    return form | {f"steps-0.{key}": value for key, value in step.items()} | overrides


def test_a_team_editor_cannot_name_another_teams_job_in_the_editor(app, erin):
    attempts = [
        calling_form(erin, "ops-secret"),
        calling_form(erin, "data-load", **{"then-0.job": "ops-secret", "then-0.on": "always"}),
        calling_form(erin, "data-load", depends_on="ops-secret"),
    ]
    for form in attempts:
        refused = erin.post("/jobs/new", data=form)
        assert refused.status_code == 422
        page = refused.get_data(as_text=True)
        assert "unknown job &#39;ops-secret&#39;" in page  # as for a job that does not exist
        assert "cycle" not in page
    truly_unknown = erin.post("/jobs/new", data=calling_form(erin, "no-such-job"))
    assert "unknown job &#39;no-such-job&#39;" in truly_unknown.get_data(as_text=True)
    taken = erin.post("/jobs/new", data=calling_form(erin, "data-load", id="ops-secret"))
    page = taken.get_data(as_text=True)
    assert taken.status_code == 422 and "this id is not available" in page
    assert "already exists" not in page
    with get_database(app).session_scope() as db:
        assert db.get(Job, "steal") is None and db.get(Job, "ops-secret").tags == ["ops"]
    assert erin.post("/jobs/new", data=calling_form(erin, "data-load")).status_code == 302


def test_a_team_editor_cannot_restore_a_version_naming_another_teams_job(app, erin):
    make_job(app, "shared", tags=["team-data"], then=[{"job": "ops-secret"}])  # by an admin
    make_job(app, "shared", tags=["team-data"])
    token = csrf_token(erin, "/jobs/shared/versions")
    restored = erin.post("/jobs/shared/versions/1/restore", data={"csrf_token": token})
    assert restored.status_code == 302
    page = erin.get("/jobs/shared/versions").get_data(as_text=True)
    assert "Version 1 cannot be restored" in page and "unknown job" in page
    with get_database(app).session_scope() as db:
        assert (db.get(Job, "shared").version, db.get(Job, "shared").then) == (2, [])


def test_a_team_editor_cannot_name_another_teams_job_through_the_api(app, erin):
    api = Api(app, "erin")
    base = {"id": "steal", "tags": ["team-data"]}
    calls = {"steps": [{"name": "call", "type": "call_job", "job": "data-load"}]}
    steals = {"steps": [{"name": "call", "type": "call_job", "job": "ops-secret"}]}
    attempts = [
        ({**base, **steals}, "steps[0].job"),
        ({**base, **calls, "then": [{"job": "ops-secret", "on": "always"}]}, "then[0].job"),
        ({**base, **calls, "depends_on": ["ops-secret"]}, "depends_on"),
    ]
    for body, field in attempts:
        refused = api.post("/jobs", json=body)
        assert refused.status_code == 422
        assert refused.get_json()["fields"] == {field: "unknown job 'ops-secret'"}
    taken = api.post("/jobs", json={**base, **calls, "id": "ops-secret"})
    assert taken.status_code == 409
    assert "already exists" not in taken.get_json()["message"]
    assert taken.get_json()["fields"] == {"id": "this id is not available"}
    assert api.get("/jobs/steal").status_code == 404
    assert api.post("/jobs", json={**base, **calls}).status_code == 201


def test_a_team_editor_still_saves_its_job_an_admin_chained_to_another_teams_job(app, erin):
    chained = {
        "id": "team-job",
        "tags": ["team-data"],
        "steps": [{"name": "call", "type": "call_job", "job": "data-load"}],
        "then": [{"job": "ops-secret", "on": "always"}],
    }
    assert Api(app, "ada").post("/jobs", json=chained).status_code == 201  # by an admin
    api = Api(app, "erin")
    saved = api.put("/jobs/team-job", json={**chained, "description": "by the team"})
    assert saved.status_code == 200, saved.get_json()
    assert [step["job"] for step in saved.get_json()["then"]] == ["ops-secret"]
    for new_reference, field in [
        ({"depends_on": ["ops-secret"]}, "depends_on"),  # a new edge to the same hidden job
        ({"steps": [{"name": "call", "type": "call_job", "job": "ops-secret"}]}, "steps[0].job"),
    ]:
        refused = api.put("/jobs/team-job", json={**chained, **new_reference})
        assert refused.status_code == 422
        assert refused.get_json()["fields"] == {field: "unknown job 'ops-secret'"}
    chain = {"then-0.job": "ops-secret", "then-0.on": "always"}
    form = calling_form(erin, "data-load", id="team-job", description="in the editor", **chain)
    assert erin.post("/jobs/team-job/edit", data=form).status_code == 302
    waiting = erin.post("/jobs/team-job/edit", data={**form, "depends_on": "ops-secret"})
    assert waiting.status_code == 422
    assert "unknown job &#39;ops-secret&#39;" in waiting.get_data(as_text=True)
    token = csrf_token(erin, "/jobs/team-job/versions")  # version 1 chains as the current one
    restored = erin.post("/jobs/team-job/versions/1/restore", data={"csrf_token": token})
    assert restored.status_code == 302
    with get_database(app).session_scope() as db:
        job = db.get(Job, "team-job")
        assert (job.version, job.description) == (4, "")
        assert [chained["job"] for chained in job.then] == ["ops-secret"]
        assert db.get(Job, "ops-secret").tags == ["ops"]


def test_roles_page_lists_permissions_and_limits_and_new_roles_reach_the_users_page(app, as_user):
    admin = as_user("ada")
    assert make_role(admin, "auditors", ["job:view"], "finance, team-data").status_code == 302
    roles_page = admin.get("/admin/roles").get_data(as_text=True)
    rid = role_id(app, "auditors")
    row = roles_page.split(f'id="role-{rid}"')[1].split("</tr>")[0]
    assert "job:view" in row and "finance" in row and "team-data" in row
    assert "all jobs" in roles_page.split('id="role-1"')[1].split("</tr>")[0]  # admin
    assert '<option value="auditors"' in admin.get("/admin/users").get_data(as_text=True)
    bad = make_role(admin, "auditors", ["job:view"])
    assert bad.status_code == 422 and "already exists" in bad.get_data(as_text=True)
    edit = {"description": "", "permissions": ["job:view", "job:run"], "job_tags": "",
            "csrf_token": csrf_token(admin, f"/admin/roles/{rid}")}  # fmt: skip
    assert admin.post(f"/admin/roles/{rid}", data=edit).status_code == 302
    with get_database(app).session_scope() as db:
        role = db.get(Role, rid)
        assert role.permissions == ["job:view", "job:run"] and role.job_tags is None
        actions = db.scalars(
            sa.select(AuditEvent.action).where(AuditEvent.target_id == "auditors")
        ).all()
    assert actions == ["role.create", "role.update"]


def test_the_admin_role_cannot_lose_user_admin(app, as_user):
    admin = as_user("ada")
    rid = role_id(app, "admin")
    form = {"permissions": ["job:view", "settings:admin"], "job_tags": "",
            "csrf_token": csrf_token(admin, f"/admin/roles/{rid}")}  # fmt: skip
    refused = admin.post(f"/admin/roles/{rid}", data=form)
    assert refused.status_code == 422
    assert 'id="role-permissions-error"' in refused.get_data(as_text=True)
    with get_database(app).session_scope() as db:
        assert "user:admin" in db.get(Role, rid).permissions
    assert admin.get("/admin/roles").status_code == 200  # still an administrator


def test_deleting_a_role_in_use_is_refused_until_nobody_has_it(app, as_user):
    admin = as_user("ada")
    make_role(admin, "temps", ["job:view"])
    rid = role_id(app, "temps")
    make_member(app, admin, "tom", "temps")
    token = csrf_token(admin, "/admin/roles")
    refused = admin.post(f"/admin/roles/{rid}/delete", data={"csrf_token": token})
    assert refused.status_code == 409
    assert "temps is still given to tom" in refused.get_data(as_text=True)
    viewer = role_id(app, "viewer")
    builtin = admin.post(f"/admin/roles/{viewer}/delete", data={"csrf_token": token})
    assert builtin.status_code == 409
    with get_database(app).session_scope() as db:
        tom = db.scalar(sa.select(User).where(User.username == "tom"))
        tom.role_id = viewer
    assert admin.post(f"/admin/roles/{rid}/delete", data={"csrf_token": token}).status_code == 302
    assert role_id(app, "temps") is None
    assert "role.delete" in admin.get("/admin/audit?action=role.delete").get_data(as_text=True)


@pytest.fixture
def two_admins(make_app, postgres_url):
    """PostgreSQL with two administrators: ada (admin role) and kim (role keepers)."""
    app = make_app(postgres_url)
    with get_database(app).session_scope() as db:
        keepers = create_role(db, "keepers", permissions=["job:view", "user:admin"])
        db.add(User(username="kim", role=keepers, password_hash=PASSWORD_HASH))
    yield app
    with get_database(app).session_scope() as db:  # roles outlive the shared database's reset
        db.execute(sa.delete(User).where(User.username == "kim"))
        db.execute(sa.delete(Role).where(Role.name == "keepers"))


def take_admin_away(db, who: str) -> None:
    """Take user:admin from kim's role, or deactivate ada."""
    if who == "keepers":
        role = db.scalar(sa.select(Role).where(Role.name == "keepers"))
        update_role(db, role, permissions=["job:view"])
    else:
        update_user(db, db.scalar(sa.select(User).where(User.username == "ada")), active=False)


def waits_on_a_lock(db, pid: int) -> bool:
    query = sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid")
    return db.scalar(query, {"pid": pid}) == "Lock"


@pytest.mark.parametrize("first, second", [("keepers", "ada"), ("ada", "keepers")])
def test_two_admins_removing_each_other_at_once_leave_one_administrator(two_admins, first, second):
    database = get_database(two_admins)
    outcome, started = {}, threading.Event()

    def second_admin():
        with database.sessions() as db:
            outcome["pid"] = db.scalar(sa.text("SELECT pg_backend_pid()"))
            started.set()
            try:
                take_admin_away(db, second)
                db.commit()
                outcome["second"] = "saved"
            except (RoleError, UserError) as error:
                db.rollback()
                outcome["second"] = error.message

    with database.sessions() as db, database.sessions() as watcher:
        take_admin_away(db, first)  # checked, not yet committed
        thread = threading.Thread(target=second_admin)
        thread.start()
        started.wait(5)
        deadline = time.monotonic() + 10  # the other change either finishes or queues
        while thread.is_alive() and not waits_on_a_lock(watcher, outcome["pid"]):
            assert time.monotonic() < deadline, "the second change neither ran nor waited"
            thread.join(0.01)
        db.commit()
    thread.join(10)
    refusal = {
        "keepers": "Only users of keepers can administer users: keep user:admin here.",
        "ada": "This is the last active administrator; keep at least one.",
    }
    assert outcome["second"] == refusal[second]
    with database.session_scope() as db:
        admins = db.scalars(
            sa.select(User.username)
            .join(Role)
            .where(User.active.is_(True))
            .where(Role.name.in_(["admin", "keepers"]))
        ).all()
        keepers = db.scalar(sa.select(Role).where(Role.name == "keepers")).permissions
    assert ("user:admin" in keepers, "ada" in admins) == (first != "keepers", first != "ada")


def test_viewers_cannot_open_the_roles_page(as_user):
    vera = as_user("vera")
    assert vera.get("/admin/roles").status_code == 403
    assert make_role(vera, "sneaky", ["user:admin"]).status_code == 403


def test_a_team_member_joins_only_its_rooms_and_gets_only_its_rows(app, teams):
    live = socketio.test_client(app, flask_test_client=teams["dana"])
    refused = {"ok": False, "error": "not found"}
    assert live.emit("join", f"run:{teams['ops_run']}", callback=True) == refused
    assert live.emit("join", "job:ops-backup", callback=True) == refused
    assert live.emit("join", f"run:{teams['data_run']}", callback=True)["ok"] is True
    assert live.emit("join", "runs", callback=True)["ok"] is True
    start_live_push(app)
    try:
        ops_new, data_new = add_runs(
            app, [{"job": "ops-backup", "state": "QUEUED"}, {"job": "data-load", "state": "QUEUED"}]
        )
        run_changed.send(ops_new)
        run_changed.send(data_new)
        fragments = fragments_until(live, f"run-{data_new}-row")
    finally:
        stop_live_push(app)
        live.disconnect()
    # pushes keep their order: the other team's row, pushed first, would have come first
    assert not any(f"run-{ops_new}-row" in html for html in fragments)


def test_a_team_member_watching_the_catalogue_is_told_only_of_its_jobs(app, teams, as_user):
    from app.live_catalogue import start_catalogue_push, stop_catalogue_push

    clients = {"dana": teams["dana"], "vera": as_user("vera")}  # vera sees every job
    watchers = {name: socketio.test_client(app, flask_test_client=c) for name, c in clients.items()}
    for live in watchers.values():
        assert live.emit("join", "jobs", callback=True) == {"ok": True, "room": "jobs"}
    start_catalogue_push(app)
    try:
        ops_new, data_new = add_runs(
            app, [{"job": "ops-backup", "state": "QUEUED"}, {"job": "data-load", "state": "QUEUED"}]
        )
        run_changed.send(ops_new)
        run_changed.send(data_new)
        dana_saw = fragments_until(watchers["dana"], 'id="job-data-load-refresh"')
        vera_saw = fragments_until(watchers["vera"], 'id="job-ops-backup-refresh"')
    finally:
        stop_catalogue_push(app)
        for live in watchers.values():
            live.disconnect()
    # ops-backup's refresh went out first (vera saw it) and never to dana: not even its id
    assert any("job-ops-backup-refresh" in html for html in vera_saw)
    assert not any("ops-backup" in html for html in dana_saw)


def fragments_until(live, marker: str, timeout: float = 5) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += [m["args"][0] for m in live.get_received() if m["name"] == "fragment"]
        if any(marker in html for html in seen):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"no fragment with {marker}")
