"""Permissions and the built-in roles of DESIGN §7."""

JOB_VIEW = "job:view"
JOB_RUN = "job:run"
JOB_EDIT = "job:edit"
JOB_DELETE = "job:delete"
PYTHON_EDIT = "python:edit"
CONNECTOR_VIEW = "connector:view"
CONNECTOR_EDIT = "connector:edit"
USER_ADMIN = "user:admin"
SETTINGS_ADMIN = "settings:admin"

ALL_PERMISSIONS = (
    JOB_VIEW,
    JOB_RUN,
    JOB_EDIT,
    JOB_DELETE,
    PYTHON_EDIT,
    CONNECTOR_VIEW,
    CONNECTOR_EDIT,
    USER_ADMIN,
    SETTINGS_ADMIN,
)

# name -> permissions; seeded by the first migration, so `user create --role` works at once
DEFAULT_ROLES = {
    "admin": ALL_PERMISSIONS,
    "editor": (
        JOB_VIEW,
        JOB_RUN,
        JOB_EDIT,
        JOB_DELETE,
        PYTHON_EDIT,
        CONNECTOR_VIEW,
        CONNECTOR_EDIT,
    ),
    "operator": (JOB_VIEW, JOB_RUN, CONNECTOR_VIEW),
    "viewer": (JOB_VIEW,),
}
