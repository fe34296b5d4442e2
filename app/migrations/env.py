"""Alembic environment: migrates the database named by the caller's config (see app/schema.py)."""

from alembic import context

from app import models  # noqa: F401  (registers every table on Base.metadata)
from app.db import Base, create_database_engine

config = context.config


def run_migrations_online() -> None:
    engine = create_database_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run_migrations_online()
