"""The schema the migrations build is the schema the models describe, on both
backends: a column added to a model without a migration (or a migration that
differs from its model) fails here, not at a customer's upgrade."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from controller.store.db import make_engine, migrate
from controller.store.models import Base


def _differences(url: str) -> list:
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": False}
            )
            return [
                difference
                for difference in compare_metadata(context, Base.metadata)
                if not _alembic_own(difference)
            ]
    finally:
        engine.dispose()


def _alembic_own(difference: object) -> bool:
    """Alembic's version table is in the database and in no model."""
    return (
        isinstance(difference, tuple)
        and difference[0] == "remove_table"
        and getattr(difference[1], "name", "") == "alembic_version"
    )


def test_migrations_build_what_the_models_describe(database_url: str) -> None:
    assert _differences(database_url) == []
