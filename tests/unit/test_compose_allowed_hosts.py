"""docker-compose.yml's URL allow-list: the compose plan's hosts pass it, loopback
(which the plan's overridable patterns admit, for the test lab) and metadata
addresses do not."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from config import PLANS_DIR
from controller.plan_loader import load_plan
from controller.url_policy import HostPolicy, url_problems

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PLAN = load_plan(PLANS_DIR / "compose.yaml")


def compose_default() -> str:
    value = COMPOSE["x-controller-env"]["CANARY_ALLOWED_URL_HOSTS"]
    match = re.fullmatch(r"\$\{CANARY_ALLOWED_URL_HOSTS:-([^}]+)\}", value)
    assert match, value
    return match.group(1)


def values(**overrides: str) -> dict[str, str]:
    out = {str(k): str(v) for k, v in PLAN.variables.items()} | overrides
    return out | {"stable_url": out["blue_url"], "canary_url": out["green_url"]}


def test_every_controller_service_gets_the_allow_list() -> None:
    controllers = {name: spec for name, spec in COMPOSE["services"].items() if spec.get("build")}
    for name, spec in controllers.items():
        if name != "flower":  # starts no rollout
            assert "CANARY_ALLOWED_URL_HOSTS" in spec["environment"], name


def test_the_default_allows_the_compose_plan_and_nothing_else() -> None:
    policy = HostPolicy.from_setting(compose_default())
    assert url_problems(PLAN, values(), policy) == []
    assert (ROOT / ".env.example").read_text().count(
        f"CANARY_ALLOWED_URL_HOSTS={compose_default()}\n"
    ) == 1
    loopback = values(blue_url="http://127.0.0.1:9000")
    assert "traffic.slot_urls.blue: host 127.0.0.1 is not among the allowed hosts" in "\n".join(
        url_problems(PLAN, loopback, policy)
    )
    assert policy.problem("http://169.254.169.254/") is not None
