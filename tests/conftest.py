"""Fixtures shared by unit and integration tests: the databases the store runs on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from controller.lab.postgres import own_schema

POSTGRES_ADMIN_URL = os.environ.get(
    "CANARY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL into a fresh, empty PostgreSQL schema, dropped afterwards.

    Each test gets its own schema (through ``search_path``) so tests never see
    each other's rows and nothing is left in the shared ``test`` database.
    """
    with ExitStack() as stack:
        try:
            url = stack.enter_context(own_schema(POSTGRES_ADMIN_URL, prefix="canary_test"))
        except Exception as exc:  # a clear failure, never a skip
            pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is needed: {exc}", pytrace=False)
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'canary.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The store's two backends: every test using this runs on both."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(name)
