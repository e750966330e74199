"""Fixtures shared by the unit tests of the rollout logic."""

from tests.unit.test_state_machine import world  # noqa: F401 - a fixture, used by name
