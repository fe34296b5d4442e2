"""The tables of DESIGN §3 and §7 as typed SQLAlchemy 2 models.

Strings that are indexed carry a length (MariaDB cannot index TEXT); timestamps are UTCDateTime.
Run ids are the keyset for history pages and log tails, so the indexes below lead with what the
pages filter on and end with the id they page by.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime, utcnow

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only
JSON = sa.JSON

ACTIVE_STATES = ("QUEUED", "RUNNING")
FINISHED_STATES = (
    "SUCCEEDED",
    "PARTIAL",
    "FAILED",
    "CANCELED",
    "TIMED_OUT",
    "SKIPPED",
    "MISSED",
    "INTERRUPTED",
)
RUN_STATES = ACTIVE_STATES + FINISHED_STATES
RUN_TRIGGERS = ("cron", "interval", "manual", "api", "retry", "replay", "chain", "catch-up")


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    description: Mapped[str] = mapped_column(sa.String(255), default="")
    permissions: Mapped[list[str]] = mapped_column(JSON, default=list)
    # None: the role's job permissions cover every job; a list: only jobs carrying one of these tags
    job_tags: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    builtin: Mapped[bool] = mapped_column(default=False)


class User(UserMixin, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    display_name: Mapped[str] = mapped_column(sa.String(128), default="")
    email: Mapped[str] = mapped_column(sa.String(255), default="")
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role_id: Mapped[int] = mapped_column(sa.ForeignKey("roles.id"))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    role: Mapped[Role] = relationship(lazy="joined")

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return self.active

    def can(self, permission: str) -> bool:
        return self.active and permission in self.role.permissions


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(128), default="")
    prefix: Mapped[str] = mapped_column(sa.String(16))  # shown in lists to tell tokens apart
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)  # sha256 hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)  # URL-safe slug, immutable
    description: Mapped[str] = mapped_column(sa.Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    schedule: Mapped[str | None] = mapped_column(sa.String(120))  # cron expression
    interval: Mapped[str | None] = mapped_column(sa.String(32))  # "15m"
    timezone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    overlap: Mapped[str] = mapped_column(sa.String(16), default="skip")
    max_parallel: Mapped[int] = mapped_column(default=4)
    grace_seconds: Mapped[int] = mapped_column(default=300)
    timeout_seconds: Mapped[int | None] = mapped_column()
    log_level: Mapped[str] = mapped_column(sa.String(16), default="INFO")
    requeue_interrupted: Mapped[bool] = mapped_column(default=False)
    params: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    retry: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    alerts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    depends_on: Mapped[list[str]] = mapped_column(JSON, default=list)
    then: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    presets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # history stays readable
    # Webhook trigger (POST /hooks/<id>): only the sha256 of the job's own token is kept.
    hook_token_hash: Mapped[str | None] = mapped_column(sa.String(64))
    hook_token_prefix: Mapped[str | None] = mapped_column(sa.String(16))

    steps: Mapped[list[Step]] = relationship(
        back_populates="job", order_by="Step.position", cascade="all, delete-orphan"
    )


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (sa.UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column()
    name: Mapped[str] = mapped_column(sa.String(100))
    type: Mapped[str] = mapped_column(sa.String(32))
    enabled: Mapped[bool] = mapped_column(default=True)
    timeout_seconds: Mapped[int] = mapped_column(default=3600)
    when: Mapped[str | None] = mapped_column(sa.Text)
    on_failure: Mapped[str] = mapped_column(sa.String(16), default="stop")
    retry: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    job: Mapped[Job] = relationship(back_populates="steps")


class JobVersion(Base):
    __tablename__ = "job_versions"
    __table_args__ = (sa.UniqueConstraint("job_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column()
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    comment: Mapped[str] = mapped_column(sa.String(255), default="")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        sa.Index("ix_runs_job_id_id", "job_id", "id"),
        sa.Index("ix_runs_state_id", "state", "id"),
        sa.Index("ix_runs_trigger_id", "trigger", "id"),
        sa.Index("ix_runs_triggered_by_id", "triggered_by", "id"),
        sa.Index("ix_runs_queued_at", "queued_at"),
        sa.Index("ix_runs_job_id_state", "job_id", "state"),
        sa.Index("ix_runs_job_id_scheduled_for", "job_id", "scheduled_for"),
        sa.Index("ix_runs_parent_run_id", "parent_run_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id"))
    job_version: Mapped[int] = mapped_column(default=1)
    trigger: Mapped[str] = mapped_column(sa.String(16))
    triggered_by: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(sa.String(16), default="QUEUED")
    reason: Mapped[str | None] = mapped_column(sa.Text)  # why SKIPPED / MISSED / FAILED
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # secrets masked
    params_sealed: Mapped[str | None] = mapped_column(sa.Text)  # full params, encrypted
    log_level: Mapped[str] = mapped_column(sa.String(16), default="INFO")
    disabled_steps: Mapped[list[str]] = mapped_column(JSON, default=list)
    node: Mapped[str | None] = mapped_column(sa.String(128))
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    parent_run_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("runs.id"))
    replay_of_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("runs.id"))
    start_step: Mapped[str | None] = mapped_column(sa.String(100))  # replay from this step
    log_lines_count: Mapped[int] = mapped_column(default=0)

    step_runs: Mapped[list[StepRun]] = relationship(
        back_populates="run", order_by="(StepRun.position, StepRun.attempt)"
    )


class StepRun(Base):
    __tablename__ = "step_runs"
    __table_args__ = (sa.Index("ix_step_runs_run_id_position", "run_id", "position", "attempt"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("runs.id", ondelete="CASCADE"))
    step_name: Mapped[str] = mapped_column(sa.String(100))
    step_type: Mapped[str] = mapped_column(sa.String(32))
    position: Mapped[int] = mapped_column()
    attempt: Mapped[int] = mapped_column(default=1)
    state: Mapped[str] = mapped_column(sa.String(16), default="PENDING")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    output: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(sa.Text)

    run: Mapped[Run] = relationship(back_populates="step_runs")


class LogLine(Base):
    __tablename__ = "log_lines"
    __table_args__ = (sa.UniqueConstraint("run_id", "seq"),)  # the tail reads "after SEQ"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("runs.id", ondelete="CASCADE"))
    step_run_id: Mapped[int | None] = mapped_column(
        BigId, sa.ForeignKey("step_runs.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column()
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(sa.String(8))
    message: Mapped[str] = mapped_column(sa.Text)


class Connector(Base):
    __tablename__ = "connectors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # sql | http | ldap | smtp
    description: Mapped[str] = mapped_column(sa.Text, default="")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # never holds a secret
    secrets_sealed: Mapped[str | None] = mapped_column(sa.Text)  # encrypted JSON of the secrets
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Variable(Base):
    __tablename__ = "variables"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    secret: Mapped[bool] = mapped_column(default=False)
    value: Mapped[str] = mapped_column(sa.Text, default="")  # encrypted when secret
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        sa.Index("ix_audit_events_at", "at"),
        sa.Index("ix_audit_events_action_at", "action", "at"),
        sa.Index("ix_audit_events_target", "target_type", "target_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    username: Mapped[str] = mapped_column(sa.String(64), default="")  # kept if the user goes
    action: Mapped[str] = mapped_column(sa.String(64))  # "login", "user.create", "job.trigger"
    target_type: Mapped[str] = mapped_column(sa.String(32), default="")
    target_id: Mapped[str] = mapped_column(sa.String(128), default="")
    ip: Mapped[str] = mapped_column(sa.String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Setting(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Channel(Base):
    """Where alerts go: email (through an smtp connector), slack, teams, webhook, or in_app."""

    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # email | slack | teams | webhook | in_app
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # never holds a secret
    secrets_sealed: Mapped[str | None] = mapped_column(sa.Text)  # encrypted JSON (url, headers)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AlertEvent(Base):
    """One alert for one run and one channel: sent, grouped into a later one, or failed."""

    __tablename__ = "alert_events"
    __table_args__ = (
        sa.Index("ix_alert_events_job_id_rule_id", "job_id", "rule", "id"),
        sa.Index("ix_alert_events_state_next_attempt_at", "state", "next_attempt_at"),
        sa.Index("ix_alert_events_run_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.String(100))
    run_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("runs.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(sa.String(32))  # failure | recovery | long_run ...
    channel: Mapped[str] = mapped_column(sa.String(100))
    state: Mapped[str] = mapped_column(sa.String(16), default="PENDING")  # SENT GROUPED FAILED
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Notification(Base):
    """An in-app alert for one user (fanned out to the users of a role): the bell."""

    __tablename__ = "notifications"
    __table_args__ = (sa.Index("ix_notifications_user_id_read_at_id", "user_id", "read_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(sa.String(100))
    run_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("runs.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(sa.String(16), default="error")  # error | warning | info
    title: Mapped[str] = mapped_column(sa.String(255))
    body: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    """An API run creation remembered by its Idempotency-Key (per user) for replayed requests."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[int] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(sa.String(64))  # sha256 of method, path and body
    run_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("runs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
