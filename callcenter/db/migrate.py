"""Alembic, driven from code so `callcenter db upgrade` and `serve` share one path."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect

from callcenter.db.engine import sqlite_path, sync_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' must be doubled for configparser interpolation (passwords may contain it).
    config.set_main_option(
        "sqlalchemy.url", sync_url(url).render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def _ensure_sqlite_dir(url: str) -> None:
    """An embedded store lives under ./var/ by default, which a fresh clone does not have."""
    path = sqlite_path(url)
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str, revision: str = "head") -> None:
    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    _ensure_sqlite_dir(url)
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    finally:
        engine.dispose()


def revision(url: str, message: str) -> None:
    """Autogenerate a new migration against an up-to-date database (developers only)."""
    command.revision(alembic_config(url), message=message, autogenerate=True)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def upgrade_if_empty(url: str) -> str:
    """Migrate a store that has no schema yet; refuse to run on one that is behind.

    An empty store is a first start; a store at an older revision belongs to an operator
    who runs `callcenter db upgrade` deliberately (and backs up first).
    """
    current = current_revision(url)
    if current is None:
        upgrade(url)
        return "migrated"
    if current != head_revision():
        raise RuntimeError(
            f"database schema is at {current}, this release needs {head_revision()}: "
            "run `callcenter db upgrade`")
    return "current"
