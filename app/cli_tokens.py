"""`nomaflow tokens create / list / revoke`: personal API tokens from the server (DESIGN §8)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
import sqlalchemy as sa

from app.cli_support import EXIT_BAD_INPUT, EXIT_NO_DATABASE, app_or_exit, fail


@click.group("tokens")
def tokens() -> None:
    """Create, list and revoke personal API tokens."""


@tokens.command("create")
@click.argument("username")
@click.option("--name", default="", help="what the token is for (shown in lists)")
def create(username: str, name: str) -> None:
    """Print a new API token for USERNAME, once."""
    from app.tokens import TokenError, create_token

    with _session() as db:
        user = _user_or_exit(db, username)
        try:
            made = create_token(db, user, name)
        except TokenError as error:
            fail(f"{username}: {error.message}", EXIT_BAD_INPUT)
    click.echo(made.secret)  # after the commit: never print a token that was not saved
    click.echo(f"token {made.token.prefix}… for {username}: shown once, keep it safe", err=True)


@tokens.command("list")
@click.argument("username")
def list_(username: str) -> None:
    """List USERNAME's tokens: id, prefix, name, created, last used, revoked."""
    from app.tokens import list_tokens

    with _session() as db:
        for token in list_tokens(db, _user_or_exit(db, username)):
            used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
            status = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
            click.echo(
                f"{token.id:<6} {token.prefix}…  {token.name or '-':<24} "
                f"created {token.created_at:%Y-%m-%d %H:%M}  used {used}  {status}"
            )


@tokens.command("revoke")
@click.argument("token_id", type=int)
def revoke(token_id: int) -> None:
    """Revoke the token TOKEN_ID (see `tokens list`) at once."""
    from app.tokens import get_token, revoke_token

    with _session() as db:
        token = get_token(db, token_id)
        if token is None:
            fail(f"no API token #{token_id}", EXIT_BAD_INPUT)
        revoked = revoke_token(db, token)
    click.echo(f"token {token.prefix}… {'revoked' if revoked else 'was already revoked'}")


@contextmanager
def _session() -> Iterator:
    """The app's database session for one command; exit 3 when the database is unreachable."""
    from app.db import get_database
    from app.startup import unreachable_message

    app = app_or_exit()
    try:
        with get_database(app).session_scope() as db:
            yield db
    except sa.exc.OperationalError as error:
        fail(unreachable_message(app.config["NOMAFLOW"].database_url, error), EXIT_NO_DATABASE)


def _user_or_exit(db, username: str):
    from app.models import User

    user = db.scalar(sa.select(User).where(User.username == username))
    if user is None:
        fail(f"no user named {username!r}", EXIT_BAD_INPUT)
    return user
