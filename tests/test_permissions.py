import sqlalchemy as sa

from app.auth import PUBLIC_ENDPOINTS
from app.db import get_database
from app.models import AuditEvent, User
from app.permissions import ALL_PERMISSIONS, DEFAULT_ROLES
from tests.conftest import csrf_token


def test_every_private_view_carries_a_requires_guard(app):
    unguarded = [
        endpoint
        for endpoint, view in app.view_functions.items()
        if endpoint not in PUBLIC_ENDPOINTS and not hasattr(view, "required_permission")
    ]
    assert unguarded == []


def test_seeded_roles_match_the_permission_table(app):
    from app.models import Role

    with get_database(app).session_scope() as db_session:
        seeded = {r.name: tuple(r.permissions) for r in db_session.scalars(sa.select(Role))}
    assert seeded == {name: tuple(perms) for name, perms in DEFAULT_ROLES.items()}
    assert set(seeded["admin"]) == set(ALL_PERMISSIONS)


def test_viewer_gets_403_on_admin_pages_and_posts_change_nothing(app, as_user):
    vera = as_user("vera")
    page = vera.get("/admin/users")
    assert page.status_code == 403
    assert "You need the user:admin permission" in page.get_data(as_text=True)
    token = csrf_token(vera, "/jobs")
    response = vera.post(
        "/admin/users",
        data={"username": "mallory", "role": "admin", "password": "x" * 12, "csrf_token": token},
    )
    assert response.status_code == 403
    with get_database(app).session_scope() as db_session:
        assert db_session.scalar(sa.select(User).where(User.username == "mallory")) is None


def test_connectors_page_needs_connector_view(as_user):
    assert as_user("vera").get("/connectors").status_code == 403
    page = as_user("otto").get("/connectors")
    assert page.status_code == 200
    assert "No connectors yet" in page.get_data(as_text=True)


def test_navigation_shows_only_what_the_user_may_open(as_user):
    admin_page = as_user("ada").get("/jobs").get_data(as_text=True)
    viewer_page = as_user("vera").get("/jobs").get_data(as_text=True)
    assert ">Admin</a>" in admin_page and ">Connectors</a>" in admin_page
    assert ">Admin</a>" not in viewer_page and ">Connectors</a>" not in viewer_page
    assert ">Runs</a>" in viewer_page


def test_admin_adds_a_user_who_can_then_sign_in(app, as_user):
    from tests.conftest import sign_in

    admin = as_user("ada")
    response = admin.post(
        "/admin/users",
        data={
            "username": "grace",
            "display_name": "Grace H",
            "role": "operator",
            "password": "",
            "csrf_token": csrf_token(admin, "/admin/users"),
        },
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "User grace created." in page
    generated = page.split('id="generated-password"')[1].split("<code>")[1].split("</code>")[0]
    assert sign_in(app.test_client(), "grace", generated).status_code == 302
    with get_database(app).session_scope() as db_session:
        event = db_session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "user.create"))
        assert (event.username, event.target_id, event.detail) == (
            "ada",
            "grace",
            {"role": "operator"},
        )


def test_bad_new_user_shows_the_error_under_the_field(as_user):
    admin = as_user("ada")
    token = csrf_token(admin, "/admin/users")
    response = admin.post(
        "/admin/users",
        data={"username": "vera", "role": "viewer", "password": "", "csrf_token": token},
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="new-username-error">A user named &#39;vera&#39; already exists.' in page
    response = admin.post(
        "/admin/users",
        data={"username": "bob", "role": "viewer", "password": "short", "csrf_token": token},
    )
    assert 'id="new-password-error">Use at least 8 characters.' in response.get_data(as_text=True)


def test_role_change_through_htmx_returns_the_row_and_is_audited(app, as_user):
    admin = as_user("ada")
    with get_database(app).session_scope() as db_session:
        vera_id = db_session.scalar(sa.select(User.id).where(User.username == "vera"))
    response = admin.post(
        f"/admin/users/{vera_id}",
        data={"role": "operator", "csrf_token": csrf_token(admin, "/admin/users")},
        headers={"HX-Request": "true"},
    )
    row = response.get_data(as_text=True)
    assert response.status_code == 200
    assert row.startswith(f'<tr id="user-{vera_id}">')
    assert '<option value="operator" selected>' in row
    with get_database(app).session_scope() as db_session:
        event = db_session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "user.update"))
        assert event.detail == {"role": ["viewer", "operator"]}


def test_the_last_administrator_cannot_be_demoted(app, as_user):
    admin = as_user("ada")
    with get_database(app).session_scope() as db_session:
        ada_id = db_session.scalar(sa.select(User.id).where(User.username == "ada"))
    response = admin.post(
        f"/admin/users/{ada_id}",
        data={"role": "viewer", "csrf_token": csrf_token(admin, "/admin/users")},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    assert "last active administrator" in response.get_data(as_text=True)
    assert admin.get("/admin/users").status_code == 200  # still an admin


def test_viewer_sees_runs_and_jobs(as_user):
    vera = as_user("vera")
    assert "No runs yet" in vera.get("/runs").get_data(as_text=True)
    assert vera.get("/jobs").status_code == 200


def test_unknown_page_is_a_404_page_not_a_crash(as_user):
    response = as_user("vera").get("/nope")
    assert response.status_code == 404
    assert "Not found" in response.get_data(as_text=True)


def test_audit_page_lists_sign_ins(as_user):
    page = as_user("ada").get("/admin/audit").get_data(as_text=True)
    assert "<code>login</code>" in page
