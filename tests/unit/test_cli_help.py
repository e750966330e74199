"""What `--help` says matches what the command does."""

from __future__ import annotations

import re

from tasks.app import QUEUES
from tests.unit.test_compose import resolve


def help_text(*command: str) -> str:
    node, rest = resolve(list(command))
    assert not rest, command
    return " ".join((node.help or "").split())


def test_worker_help_names_every_queue_to_run_a_worker_for() -> None:
    """A reader who runs one worker per queue the help lists must not miss one (the
    reconcile queue hands out all due work)."""
    lead = help_text("worker").split("In production run one worker per queue:", 1)[1]
    listed = set(re.findall(r"[a-z]+", lead.split(".", 1)[0]))
    assert set(QUEUES) <= listed, set(QUEUES) - listed


def test_plan_register_help_says_a_token_names_the_registrant() -> None:
    """Through the API the registrant is the token's name, not the OS login."""
    text = help_text("plan", "register")
    assert "the API token's name with CANARY_API_URL and CANARY_TOKEN set" in text
    assert "else your OS login name (direct database access)" in text
    assert "Here the registrant is your OS login name" not in text
