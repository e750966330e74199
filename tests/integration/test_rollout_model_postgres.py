"""The rollout model (``tests/unit/test_rollout_model.py``) on PostgreSQL.

SQLite takes one writer at a time and ignores ``SELECT ... FOR UPDATE``; PostgreSQL
locks rows, measures leases by its own clock and hands out event ids from a
sequence. The interleavings that matter most (an API rollback while an advance holds
the lease and a row lock) behave as in production only here. The store is a schema
of its own (``postgres_url``), so parallel test processes never meet.

Run deeper as the unit model says (``CANARY_MODEL_EXAMPLES=...``).
"""

from __future__ import annotations

import pytest

from tests.unit.test_rollout_model import run_model

pytestmark = pytest.mark.integration


def test_rollout_model_on_postgresql(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The promises hold in every interleaving the model tries, on PostgreSQL."""
    run_model(postgres_url, monkeypatch, examples=40)
