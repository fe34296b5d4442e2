"""Nomaflow: one catalogue of jobs, one scheduler, one history of runs, one live log tail."""

from __future__ import annotations

import logging

from flask import Flask

from app.config import Settings, load_settings

__version__ = "0.1.0"


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app: config, extensions, blueprints. Starts no thread (see app.scheduler)."""
    settings = settings or load_settings()
    app = Flask(
        __name__,
        instance_path=str(settings.instance_path),
        template_folder="../templates",
        static_folder="../static",
        static_url_path="/static",
    )
    app.config.from_mapping(settings.flask_config())
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)

    from app import auth, db, http_security, live, scheduler
    from app.engine import service as engine
    from app.web import register_blueprints

    db.init_app(app)
    http_security.init_app(app)
    auth.init_app(app)
    live.init_app(app)
    scheduler.init_app(app)
    engine.init_app(app)
    register_blueprints(app)
    return app
