"""Hostile input sent to the served API: each must be a 422 that says where the
problem is, never a 500, and must leave the store exactly as it was.

- plan YAML that attacks the parser (an alias bomb, nesting hundreds deep, an integer
  past Python's 4,300-digit conversion limit) or hides a second value behind a
  repeated key, registered as a plan;
- JSON bodies the parser gives up on (nested a thousand deep, an integer past the same
  limit), to the two endpoints that take the largest bodies;
- separation of duties through the API, where the approver is the token's name: the
  starter of a rollout cannot approve it, and one person approves in one role.

``weight: true`` in a registered plan is not repeated here: test_api_alerts
(test_operators_start_from_plans_an_admin_registered) refuses it through the API and
checks that nothing was registered.

The API runs as its own process (``canary api``) on a real PostgreSQL schema, as in
test_api_fuzz; no worker runs, so nothing but these calls changes the store.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from config import PLANS_DIR
from controller.plan_loader import parse_plan
from controller.runtime import utcnow
from controller.store import repository
from tests.conftest import postgres_schema
from tests.integration.rollout_helpers import STABLE, deploy, snapshot, start_lab
from tests.integration.test_api_alerts import call
from tests.integration.test_api_fuzz import Api

pytestmark = pytest.mark.integration

STARTER, ERIN, ADMIN = (secrets.token_hex(16) for _ in range(3))
DEMO_YAML = (PLANS_DIR / "demo.yaml").read_text()


def demo_yaml_with(old: str, new: str) -> str:
    """The demo plan with one line replaced (which must be there)."""
    assert old in DEMO_YAML, old
    return DEMO_YAML.replace(old, new, 1)


RELEASE_MANAGER_LINE = DEMO_YAML.splitlines().index("  release_manager: [alice]") + 1
CANARY_WEIGHT_LINE = DEMO_YAML.splitlines().index("    weight: 10") + 1
FIRST_QUERY = 'canary_errors: sum(increase(demo_http_requests_total{service="{{ service }}", '

# The demo plan where erin owns two of the roles preflight needs; alice starts the
# rollout and is a release manager too.
TWO_HATS_YAML = demo_yaml_with(
    "  release_manager: [alice]\n  backend_oncall: [bob]\n  sre_oncall: [carol]\n"
    "  security_approver: [dave]\n",
    "  release_manager: [alice, erin]\n  backend_oncall: [bob]\n  sre_oncall: [carol]\n"
    "  security_approver: [dave, erin]\n",
)


def alias_bomb() -> str:
    """The "billion laughs" in YAML: nine strings, then nine levels of nine aliases to
    the level below; under 1 KB of text for 9**10 (3.5 billion) strings once expanded."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        aliases = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [{aliases}]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 1024
    return text


# (plan_yaml, what the refusal says, the line it names).
HOSTILE_PLANS = [
    pytest.param(
        alias_bomb(),
        "YAML aliases (*l0) are not allowed in a plan: write the value out",
        2,
        id="alias-bomb",
    ),
    pytest.param(
        "name: deep\nstages: " + "[" * 900 + "]" * 900 + "\n",
        "nested deeper than 40 levels",
        2,
        id="nested-900-deep",
    ),
    pytest.param(
        "name: big\nstages:\n  - name: canary\n    kind: canary\n    weight: " + "9" * 5000 + "\n",
        "integer of 5000 digits: at most 30",
        5,
        id="integer-5000-digits",
    ),
    # Without the refusal the last value silently wins: a reviewer reads alice as the
    # release manager and mallory approves. The plan is otherwise valid, so a loader
    # that let the key through would register it (201).
    pytest.param(
        demo_yaml_with(
            "  release_manager: [alice]\n",
            "  release_manager: [alice]\n  release_manager: [mallory]\n",
        ),
        f"duplicate key 'release_manager' (first on line {RELEASE_MANAGER_LINE})",
        RELEASE_MANAGER_LINE + 1,
        id="duplicate-key",
    ),
    # YAML 1.1 reads these otherwise than a reviewer does: the canary at 8 %, 90 % or
    # 50 %, a stage named by the bytes of a !!binary.
    pytest.param(
        demo_yaml_with("    weight: 10\n", "    weight: 010\n"),
        "010 is read by YAML 1.1 as 8 (octal, for the leading 0): write it in plain decimal "
        "(10 or 8), or quote '010' if it is text",
        CANARY_WEIGHT_LINE,
        id="octal",
    ),
    pytest.param(
        demo_yaml_with("    weight: 10\n", "    weight: 1:30\n"),
        "1:30 is read by YAML 1.1 as 90 (base 60): write it in plain decimal (90), or quote "
        "'1:30' if it is text",
        CANARY_WEIGHT_LINE,
        id="base-60",
    ),
    pytest.param(
        demo_yaml_with("    weight: 10\n", "    weight: 5_0\n"),
        "5_0 is read by YAML 1.1 as 50 (underscores are dropped): write it in plain decimal "
        "(50), or quote '5_0' if it is text",
        CANARY_WEIGHT_LINE,
        id="underscores",
    ),
    pytest.param(
        demo_yaml_with("  - name: canary\n", "  - name: !!binary Y2FuYXJ5\n"),
        "!!binary is read by YAML as bytes, which no plan field takes: write the text, list "
        "or mapping itself",
        CANARY_WEIGHT_LINE - 2,
        id="binary",
    ),
    # The store cannot hold a NUL: once it was refused as raw text only, and the escape
    # registered a plan whose every start failed in PostgreSQL.
    pytest.param(
        demo_yaml_with("  scrape_job: lab\n", '  scrape_job: "lab\\0"\n'),
        "contains a NUL character (\\0), which no text may hold",
        DEMO_YAML.splitlines().index("  scrape_job: lab") + 1,
        id="escaped-nul",
    ),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The API on its own schema with the two-hats plan registered and a rollout of it
    started through the API by alice (pending: no worker runs)."""
    with postgres_schema() as url:
        lab = start_lab(
            tmp_path_factory.mktemp("hostile"),
            url,
            extra_env={
                "CANARY_API_TOKENS": f"alice:operator:{STARTER},erin:operator:{ERIN},"
                f"ada:admin:{ADMIN}",
            },
        )
        try:
            base = lab.start_api()
            registered = call(
                "POST",
                f"{base}/api/v1/plans",
                ADMIN,
                json={"name": "two-hats", "plan_yaml": TWO_HATS_YAML},
            )
            assert registered.status_code == 201, registered.text
            started = call(
                "POST",
                f"{base}/api/v1/rollouts",
                STARTER,
                json={
                    "plan": "two-hats",
                    "service": lab.settings.service,
                    "version": deploy(lab),
                    "stable": STABLE,
                    "variables": lab.plan_variables(),
                },
            )
            assert started.status_code == 201, started.text
            found = Api(lab, base, started.json()["id"])
            yield found
            found.engine.dispose()
        finally:
            lab.stop()


def refused(
    api: Api, token: str, path: str, *, json: Any = None, content: bytes | None = None
) -> list[dict[str, Any]]:
    """POST that must be a 422 and change nothing in the store; returns its problems."""
    before = api.store_state()
    headers = {"Content-Type": "application/json"} if content is not None else None
    response = call("POST", f"{api.url}{path}", token, headers=headers, json=json, content=content)
    assert response.status_code == 422, response.text[:500]
    assert api.store_state() == before, f"POST {path} changed the store: {response.text[:500]}"
    problems: list[dict[str, Any]] = response.json()["detail"]
    assert problems and all(p.get("loc") for p in problems), problems
    return problems


def approvals(api: Api, name: str) -> list[str]:
    """The roles ``name`` approved the rollout in, oldest first."""
    _, events = snapshot(api.lab, api.rollout_id)
    return [e.data["role"] for e in events if e.kind == "approval" and e.data["name"] == name]


@pytest.mark.parametrize(("plan_yaml", "message", "line"), HOSTILE_PLANS)
def test_hostile_plan_yaml_is_refused_with_its_line(
    api: Api, plan_yaml: str, message: str, line: int
) -> None:
    """Plan text attacking the YAML parser is refused by the guarded loader, naming the
    plan and the line, before anything is built; nothing is registered. The message
    and line are the guard's own: without it the bomb is built and handed on to
    whatever walks it, the nesting ends in a RecursionError and the integer in int()'s
    ValueError (both reported with no line), and the repeated key registers a plan
    that kept only its last value."""
    name = "hostile-plan"
    problems = refused(api, ADMIN, "/api/v1/plans", json={"name": name, "plan_yaml": plan_yaml})
    assert problems == [{"loc": ["plan"], "line": line, "msg": message}]
    missing = call("GET", f"{api.url}/api/v1/plans/{name}", ADMIN)
    assert missing.status_code == 404, missing.text


def nested(depth: int) -> bytes:
    """A JSON array nested ``depth`` levels deep."""
    return b"[" * depth + b"]" * depth


# Bodies whose JSON Python's parser cannot read: a RecursionError a thousand levels
# down, a ValueError past int()'s 4,300-digit limit. FastAPI answers both with a bare
# 400 that names nothing; the API's handler turns it into a 422 at the body.
HOSTILE_JSON = [
    pytest.param(
        ADMIN,
        "/api/v1/plans",
        b'{"name": "deep", "plan_yaml": "name: x\\n", "note": ' + nested(1000) + b"}",
        id="plans-nested-1000-deep",
    ),
    pytest.param(
        ADMIN,
        "/api/v1/plans",
        b'{"name": "big", "plan_yaml": "name: x\\n", "note": ' + b"9" * 5000 + b"}",
        id="plans-integer-5000-digits",
    ),
    pytest.param(
        STARTER,
        "/api/v1/rollouts",
        b'{"plan": "demo", "service": "checkout", "version": "9.9.9", "variables": '
        + nested(1000)
        + b"}",
        id="rollouts-nested-1000-deep",
    ),
    pytest.param(
        STARTER,
        "/api/v1/rollouts",
        b'{"plan": "demo", "service": "checkout", "version": "9.9.9", "plan_version": '
        + b"9" * 5000
        + b"}",
        id="rollouts-integer-5000-digits",
    ),
]


@pytest.mark.parametrize(("token", "path", "body"), HOSTILE_JSON)
def test_json_the_parser_gives_up_on_is_a_422_at_the_body(
    api: Api, token: str, path: str, body: bytes
) -> None:
    """A body nested past the recursion limit or holding a number past the integer
    conversion limit is refused as invalid JSON located at the body (not a 400 that
    names nothing, not a 500), and no plan or rollout is created."""
    assert len(body) < 10_000  # far under the body limit: the parser refuses, not the size
    problems = refused(api, token, path, content=body)
    assert problems == [
        {
            "loc": ["body"],
            "msg": "not valid JSON: nested too deeply, a number too large, or not JSON at all",
        }
    ]


def test_the_starter_of_a_rollout_cannot_approve_it(api: Api) -> None:
    """alice started the rollout with her token and owns a role preflight needs; the
    API identifies her by that token and refuses her approval (separation of duties),
    recording nothing. Without the rule this call would be accepted (200)."""
    shown = call("GET", f"{api.url}/api/v1/rollouts/{api.rollout_id}", ADMIN)
    assert shown.status_code == 200 and shown.json()["created_by"] == "alice", shown.text
    problems = refused(
        api,
        STARTER,
        f"/api/v1/rollouts/{api.rollout_id}/approve",
        json={"role": "release_manager", "stage": "preflight"},
    )
    assert problems == [
        {
            "loc": ["as"],
            "msg": "alice started this rollout and cannot also approve it (separation of duties)",
        }
    ]
    assert approvals(api, "alice") == []


def test_one_person_approves_in_one_role_per_rollout(api: Api) -> None:
    """erin owns both release_manager and security_approver, which preflight both
    needs: her token approves in one of them, never both, so two roles always mean two
    people. Each refused call records nothing."""
    approve = f"/api/v1/rollouts/{api.rollout_id}/approve"
    ambiguous = refused(api, ERIN, approve, json={"stage": "preflight"})
    assert ambiguous[0]["loc"] == ["role"]
    assert "erin is an owner of release_manager, security_approver" in ambiguous[0]["msg"]
    assert approvals(api, "erin") == []

    first = call(
        "POST",
        f"{api.url}{approve}",
        ERIN,
        json={"role": "release_manager", "stage": "preflight"},
    )
    assert first.status_code == 200 and first.json()["accepted"], first.text
    assert approvals(api, "erin") == ["release_manager"]

    second = refused(api, ERIN, approve, json={"role": "security_approver", "stage": "preflight"})
    assert second[0]["loc"] == ["role"]
    assert "erin approved this rollout as release_manager already" in second[0]["msg"]
    assert approvals(api, "erin") == ["release_manager"]


def side_rollout(api: Api, service: str) -> str:
    """A pending rollout of the two-hats plan for a service of its own, written to the
    store directly (its router state is not what these tests are about)."""
    with Session(api.engine) as session:
        rollout = repository.create_rollout(
            session,
            service=service,
            canary_version="9.9.9",
            stable_version=STABLE,
            plan_name="two-hats",
            plan=parse_plan(TWO_HATS_YAML).model_dump(mode="json"),
            created_by="alice",
            now=utcnow(),
        )
        session.commit()
        return rollout.id


def at_once(requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send every request at the same moment, each on a connection of its own."""
    barrier = threading.Barrier(len(requests))

    def send(request: dict[str, Any]) -> httpx.Response:
        barrier.wait()
        return call("POST", **request)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def test_one_person_in_two_roles_approving_twice_at_once_counts_once(api: Api) -> None:
    """erin owns release_manager and security_approver; both her approvals sent in
    parallel must not both be recorded (before the row lock, 6 of 8 tries recorded
    both, and preflight's two-person rule was met by one person)."""
    for attempt in range(8):
        rollout_id = side_rollout(api, f"parallel-{attempt}")
        path = f"{api.url}/api/v1/rollouts/{rollout_id}/approve"
        answers = at_once(
            [
                {"url": path, "token": ERIN, "json": {"role": role, "stage": "preflight"}}
                for role in ("release_manager", "security_approver")
            ]
        )
        with Session(api.engine) as session:
            events = repository.events_for(session, rollout_id, ["approval"])
            roles = [e.data["role"] for e in events if e.data["name"] == "erin"]
        assert len(roles) == 1, (attempt, roles, [a.text for a in answers])
        assert sorted(a.status_code for a in answers) == [200, 422], [a.text for a in answers]


def test_ten_identical_approvals_at_once_write_one_audit_line(api: Api) -> None:
    rollout_id = side_rollout(api, "parallel-same")
    path = f"{api.url}/api/v1/rollouts/{rollout_id}/approve"
    request = {
        "url": path,
        "token": ERIN,
        "json": {"role": "release_manager", "stage": "preflight"},
    }
    answers = at_once([request] * 10)
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    with Session(api.engine) as session:
        assert len(repository.events_for(session, rollout_id, ["approval"])) == 1


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/api/v1/rollouts",
            {"plan": "two-hats", "service": "checkout", "version": "2.0.0\n"},
            "version",
        ),
        (
            "/api/v1/rollouts",
            {"plan": "two-hats", "service": "checkout\n", "version": "2.0.0"},
            "service",
        ),
        (
            "/api/v1/rollouts",
            {"plan": "two-hats", "service": "checkout", "version": "2.0.0", "stable": "1.0.0\n"},
            "stable",
        ),
        ("/api/v1/plans", {"name": "evil\n", "plan_yaml": TWO_HATS_YAML}, "plan"),
    ],
    ids=["version", "service", "stable", "plan-name"],
)
def test_a_trailing_newline_is_not_part_of_a_name(
    api: Api, path: str, body: dict[str, Any], field: str
) -> None:
    """``^…$`` with ``re.match`` lets "2.0.0\\n" through: a rollout whose every query is
    invalid PromQL, a plan named "evil\\n". Names are matched whole: a 422 naming
    the field, and the store unchanged."""
    token = ADMIN if path.endswith("plans") else ERIN
    problems = refused(api, token, path, json=body)
    assert any(
        field in [str(part) for part in p["loc"]] or p["msg"].startswith(f"{field}:")
        for p in problems
    ), problems


def with_first_query(query: str) -> str:
    """The demo plan with its first query replaced by ``query`` (as a JSON string,
    which YAML reads as written, escapes included)."""
    line = next(line for line in DEMO_YAML.splitlines() if FIRST_QUERY in line)
    return demo_yaml_with(line, f"    canary_errors: {json.dumps(query)}")


# (plan_yaml, where the refusal points, how its message starts)
NEVER_RUNS = [
    pytest.param(
        demo_yaml_with("  - name: staging-soak\n", "  - name: preflight\n"),
        ["plan", "stages[0]", "name"],
        "'preflight' is reserved: it names the go/no-go approval gate",
        id="stage-named-preflight",
    ),
    pytest.param(
        demo_yaml_with(
            FIRST_QUERY + 'version="{{ canary_version }}"',
            FIRST_QUERY + 'version="{{ canary-version }}"',
        ),
        ["plan", "stop_criteria[0]", "canary_errors"],
        "'{{ canary-version }}' is not a template: write {{ name }} with a known variable "
        "(did you mean {{ canary_version }}?)",
        id="template-typo",
    ),
    pytest.param(
        demo_yaml_with('service="{{ service }}"', 'service="{{ service.__class__ }}"'),
        ["plan", "gates", "no_firing_alerts"],
        "'{{ service.__class__ }}' is not a template",
        id="template-attribute",
    ),
    pytest.param(
        demo_yaml_with("  release_manager: [alice]\n", '  release_manager: ["   "]\n'),
        ["plan", "owners", "release_manager[0]"],
        "'   ' cannot be an approver's name: it is empty or only whitespace",
        id="owner-blank",
    ),
    pytest.param(
        demo_yaml_with("  release_manager: [alice]\n", '  release_manager: ["alice\\n"]\n'),
        ["plan", "owners", "release_manager[0]"],
        "'alice\\n' cannot be an approver's name: it starts or ends with whitespace",
        id="owner-newline",
    ),
    pytest.param(
        demo_yaml_with("    hold: 8s\n", "    hold: \u0661\u0660s\n"),
        ["plan", "stages[1]", "hold"],
        "'\u0661\u0660s' has digits other than 0-9 ('\u0661\u0660' reads as 10)",
        id="arabic-indic-digits",
    ),
    # 1.1 GB in the parser, and 2.5 GB for an API that started such a plan.
    pytest.param(
        with_first_query("-" * 3990 + "x"),
        ["plan", "stop_criteria[0]", "canary_errors"],
        "not valid PromQL: 3990 signs (+ or -) in a row; at most 2 are accepted",
        id="sign-run",
    ),
    # The quote in the comment hid the brackets from the nesting guard: 443 MB, and a
    # SIGSEGV on a small thread stack.
    pytest.param(
        with_first_query('# "\n' + "(" * 1990 + "1" + ")" * 1990),
        ["plan", "stop_criteria[0]", "canary_errors"],
        "not valid PromQL: nested 1990 deep; at most 100 levels are accepted",
        id="comment-quote",
    ),
]


@pytest.mark.parametrize(("plan_yaml", "loc", "message"), NEVER_RUNS)
def test_a_plan_that_could_never_run_as_written_is_refused(
    api: Api, plan_yaml: str, loc: list[str], message: str
) -> None:
    """Each of these registered before: a stage whose approvals went to the
    preflight gate, a query with a template typo that could never match, an approval
    nobody can give, ten minutes written in other digits, and queries that took the
    parser gigabytes or its stack. Each is a 422 naming the field, nothing registered."""
    name = "never-runs"
    problems = refused(api, ADMIN, "/api/v1/plans", json={"name": name, "plan_yaml": plan_yaml})
    assert [p["loc"] for p in problems] == [loc], problems
    assert problems[0]["msg"].startswith(message), problems
    missing = call("GET", f"{api.url}/api/v1/plans/{name}", ADMIN)
    assert missing.status_code == 404, missing.text


@pytest.mark.parametrize("action", ["resume", "recheck"])
@pytest.mark.parametrize("body", [b"{not json", b'{"reason": "because"}'])
def test_an_action_without_a_body_refuses_one(api: Api, action: str, body: bytes) -> None:
    """resume and recheck take no body; one sent (invalid JSON, or a reason the
    client believes is recorded) is a 422 and the action is not taken. Before, the
    body was ignored and the action taken (here: a 409, the rollout is pending)."""
    path = f"/api/v1/rollouts/{api.rollout_id}/{action}"
    problems = refused(api, ERIN, path, content=body)
    assert [p["loc"] for p in problems] == [["body"]], problems


def with_backend_variable(default: str) -> str:
    """The two-hats plan routing through a backend named by a plan variable."""
    text = TWO_HATS_YAML.replace(
        "  scrape_job: lab\n", f'  scrape_job: lab\n  pool: "{default}"\n', 1
    )
    text = text.replace(
        "  scrape_job: '[a-z][a-z0-9_-]{0,62}'\n",
        "  scrape_job: '[a-z][a-z0-9_-]{0,62}'\n  pool: '[a-z/]{1,20}'\n",
        1,
    )
    assert 'backend: "{{ service }}"' in text
    return text.replace('backend: "{{ service }}"', 'backend: "{{ pool }}"', 1)


def test_a_backend_name_from_a_variable_is_bad_input_not_an_unavailable_router(api: Api) -> None:
    """``x;disable server x/blue`` as the backend's variable registered, and a start
    with a backend that is no HAProxy name answered 503 with Retry-After (a client
    retries for ever). Both are bad input: 422 naming the field, nothing changed."""
    problems = refused(
        api,
        ADMIN,
        "/api/v1/plans",
        json={"name": "bad-backend", "plan_yaml": with_backend_variable("x;disable server x/blue")},
    )
    assert any(
        "variables.pool" in p["msg"] and "HAProxy backend name" in p["msg"] for p in problems
    ), problems

    registered = call(
        "POST",
        f"{api.url}/api/v1/plans",
        ADMIN,
        json={"name": "pool-backend", "plan_yaml": with_backend_variable("checkout")},
    )
    assert registered.status_code == 201, registered.text
    variables = {**api.lab.plan_variables(), "pool": "x/blue"}
    problems = refused(
        api,
        ERIN,
        "/api/v1/rollouts",
        json={
            "plan": "pool-backend",
            "service": "checkout",
            "version": "7.7.7",
            "stable": STABLE,
            "variables": variables,
        },
    )
    assert problems[0]["loc"] == ["traffic.backend"], problems
    assert problems[0]["msg"].startswith("renders to 'x/blue', which is not a HAProxy"), problems
