"""The served API fuzzed from its own OpenAPI document (schemathesis): every endpoint,
with inputs that fit the schema and inputs that do not, called with no token and with
each role's token.

What must hold for every call:
- no server error (5xx; the store and the broker are up, so not even a 503);
- the answer is one the document declares for that endpoint, with the declared body;
- a 422 names the field of each problem;
- a refused call (any 4xx) leaves the store exactly as it was.

The API runs as its own process (``canary api``) on a real PostgreSQL schema, with a
rollout and a registered plan in it, so that paths naming them reach the code behind
the 404. No worker runs: nothing but these calls changes the store.
"""

from __future__ import annotations

import os
import re
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import create_engine, text

from controller.lab.stack import RolloutLab
from controller.store.models import Base
from tests.conftest import postgres_schema
from tests.integration.rollout_helpers import begin, deploy, start_lab

pytestmark = pytest.mark.integration

VIEWER, OPERATOR, ADMIN, ALERTS = (secrets.token_hex(16) for _ in range(4))
# Positive inputs fit the document but may still be refused: which plan exists, which
# service is active, what one field means beside another are not in a JSON schema.
NOT_CHECKED = [positive_data_acceptance]
# Invalid input may be refused for its size (413) before anything reads it.
# Tokens are ours to set per caller (CALLERS), not generated.
CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"with-security-parameters": False},
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]
            }
        },
    }
)
CALLERS = {"no token": None, "viewer": VIEWER, "operator": OPERATOR, "admin": ADMIN}


class Api:
    """The API under test and what the fuzzer needs to know about its store."""

    def __init__(self, lab: RolloutLab, url: str, rollout_id: str) -> None:
        self.lab, self.url, self.rollout_id = lab, url, rollout_id
        self.engine = create_engine(lab.database_url)
        self.answers: Counter[int] = Counter()  # status codes seen, over every call

    def store_state(self) -> dict[str, str]:
        """A digest of every row of every table: equal digests, equal store."""
        with self.engine.connect() as conn:
            return {
                table.name: conn.execute(
                    text(
                        "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                        f'FROM "{table.name}" t'
                    )
                ).scalar_one()
                for table in Base.metadata.sorted_tables
            }


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with postgres_schema() as url:
        lab = start_lab(
            tmp_path_factory.mktemp("fuzz"),
            url,
            extra_env={
                "CANARY_API_TOKENS": f"vic:viewer:{VIEWER},olga:operator:{OPERATOR},"
                f"ada:admin:{ADMIN}",
                "CANARY_ALERTMANAGER_TOKEN": ALERTS,
            },
        )
        try:
            base = lab.start_api()
            rollout_id = begin(lab, deploy(lab))
            plan_text = (Path(__file__).parents[2] / "config/plans/demo.yaml").read_text()
            registered = httpx.post(
                f"{base}/api/v1/plans",
                json={"name": "demo", "plan_yaml": plan_text},
                headers={"Authorization": f"Bearer {ADMIN}"},
                trust_env=False,
                timeout=30,
            )
            assert registered.status_code == 201, registered.text
            found = Api(lab, base, rollout_id)
            yield found
            found.engine.dispose()
        finally:
            lab.stop()


def call_as_everyone(case: Case, api: Api) -> None:
    for caller, token in CALLERS.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if case.path.endswith("/alerts/alertmanager") and token == ADMIN:
            headers = {"Authorization": f"Bearer {ALERTS}"}  # the webhook's own token
        before = api.store_state()
        response = case.call(base_url=api.url, headers=headers, timeout=30)
        api.answers[response.status_code] += 1
        where = f"{case.method} {case.formatted_path} as {caller}: {response.status_code}"
        # The store and Redis are up throughout: even a 503 would be a bug here.
        assert response.status_code < 500, f"{where} {response.text[:500]}"
        case.validate_response(response, headers=headers, excluded_checks=NOT_CHECKED)
        if response.status_code == 422:
            problems = response.json()["detail"]
            assert problems and all(p.get("loc") for p in problems), f"{where} {response.text}"
        if 400 <= response.status_code < 500:
            assert api.store_state() == before, f"{where} changed the store: {response.text}"


# Examples per operation, mode and aim. The suite's figure keeps it near 40 s on a
# 2-core machine; CANARY_FUZZ_EXAMPLES=200 is the deeper run before a release.
EXAMPLES = int(os.environ.get("CANARY_FUZZ_EXAMPLES", "20"))

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same inputs on every run: a failure reproduces
    deadline=None,  # a busy machine must not turn a slow call into a failure
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_no_input_breaks_the_api(api: Api) -> None:
    """Every operation of the served document, with inputs that fit its schema and
    inputs that do not; each also aimed at the rollout and plan that exist."""
    schema = schemathesis.openapi.from_url(f"{api.url}/api/v1/openapi.json", config=CONFIG)
    known = {"rollout_id": api.rollout_id, "name": "demo", "service": api.lab.settings.service}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18, [op.label for op in operations]
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        aimed = {name: known[name] for name in names if name in known}
        aims = [None, aimed] if aimed else [None]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in aims:
                strategy = operation.as_strategy(mode, path_parameters=path_parameters)

                @FUZZ
                @given(case=strategy)
                def fuzz(case: Case) -> None:
                    call_as_everyone(case, api)

                try:
                    fuzz()
                except Unsatisfiable:
                    # Nothing in the operation can be made invalid (no parameters,
                    # no body): its positive inputs covered it.
                    assert mode is GenerationMode.NEGATIVE, operation.label
    # The calls reached past each layer: accepted, unauthenticated, the wrong role,
    # a name that exists (so 404 was not all), bad input, a state that refused.
    assert {200, 202, 401, 403, 404, 409, 422} <= set(api.answers), api.answers


def test_the_document_declares_its_tokens_and_refusals(api: Api) -> None:
    """What a client generator needs: the bearer schemes, and on each operation the
    refusals it can answer with, typed."""
    document = httpx.get(f"{api.url}/api/v1/openapi.json", trust_env=False, timeout=10).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiToken"] == {**schemes["apiToken"], "type": "http", "scheme": "bearer"}
    assert schemes["alertmanagerToken"]["scheme"] == "bearer"
    operations = {
        (method.upper(), path): spec
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
    }
    start = operations[("POST", "/api/v1/rollouts")]
    assert start["security"] == [{"apiToken": []}]
    assert {"401", "403", "404", "409", "413", "422", "503"} <= set(start["responses"])
    assert start["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    webhook = operations[("POST", "/api/v1/alerts/alertmanager")]
    assert webhook["security"] == [{"alertmanagerToken": []}]
    pause = operations[("POST", "/api/v1/rollouts/{rollout_id}/pause")]
    assert pause["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Outcome"
    }
    secured = [key for key, spec in operations.items() if key[1].startswith("/api/v1/")]
    assert all(operations[key].get("security") for key in secured), [
        key for key in secured if not operations[key].get("security")
    ]


def test_the_docs_page_loads_nothing_from_outside(api: Api) -> None:
    """The docs work on a host with no way out: every script, stylesheet and icon the
    page names is served by the API itself."""
    page = httpx.get(f"{api.url}/api/v1/docs", trust_env=False, timeout=10)
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert assets, page.text[:500]
    assert not [a for a in assets if not a.startswith("/")], assets
    for asset in assets:
        served = httpx.get(f"{api.url}{asset}", trust_env=False, timeout=10)
        assert served.status_code == 200 and served.content, asset
    assert "/api/v1/openapi.json" in page.text
