"""What every `nomaflow` command shares: exit codes (DESIGN §8), failing with one line, the app."""

from __future__ import annotations

import sys

import click

from app.config import ConfigError, load_settings

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NO_DATABASE = 1, 2, 3


def fail(message: str, code: int):
    """Print ``nomaflow: message`` on stderr and exit with ``code``."""
    click.echo(f"nomaflow: {message}", err=True)
    sys.exit(code)


def settings_or_exit():
    try:
        return load_settings()
    except ConfigError as error:
        fail(str(error), EXIT_BAD_INPUT)


def app_or_exit():
    from app import create_app

    return create_app(settings_or_exit())
