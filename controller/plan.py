"""The rollout plan: what an SRE writes in YAML, validated before anything moves.

A plan is the seed rollout plan made executable: stages (staging soak, canary,
ramp steps with holds, post-deploy verification), stop criteria written as PromQL
with template variables, a judge per criterion, and what to do when the data is
missing or Prometheus cannot answer.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema

from controller.durations import DURATION_PATTERN, format_duration, parse_duration
from controller.input_text import person_name_problem
from controller.notification_target import NotificationTarget
from controller.numbers import Count, Number
from controller.regex_input import PatternError, compile_pattern, matches_whole

Duration = Annotated[
    timedelta,
    BeforeValidator(lambda v: v if isinstance(v, timedelta) else parse_duration(v)),
    PlainSerializer(format_duration, return_type=str),
    # As plans spell it, for editors using ``canary plan schema`` (not ISO 8601).
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: numbers with units ms, s, m, h, d, e.g. 30m, 90s, 1h30m",
        }
    ),
]


def _at_most(limit: timedelta, why: str) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if value > limit:
            raise ValueError(f"at most {format_duration(limit)}: {why}")
        return value

    return AfterValidator(check)


# Checks run inside a rollout step, which a task time limit bounds; hooks run in the
# runbook task, which has more room. Longer suites belong in CI, gated by their status.
StepTimeout = Annotated[
    Duration, _at_most(timedelta(seconds=30), "checks run inside a rollout step")
]
HookTimeout = Annotated[
    Duration, _at_most(timedelta(minutes=2), "hooks run inside the runbook task")
]

TEMPLATE_VARIABLES = (
    "service",
    "canary_version",
    "stable_version",
    "environment",
    "window",
    "stable_slot",
    "canary_slot",
    # The version the redeploy hook puts into the stable slot: the canary version when
    # a release is promoted, the stable version when a rollback puts it back.
    "deploy_version",
)
SLOT_URL_VARIABLES = ("stable_url", "canary_url")  # from traffic.slot_urls, when given
# The go/no-go gate's name where approvals name their gate: no stage may take it.
PREFLIGHT_GATE = "preflight"
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NAME = r"^[a-z0-9][a-z0-9_.-]*$"
_HAPROXY_NAME = r"^[A-Za-z0-9_.:-]+$"  # no spaces or ';': names go into runtime-API commands
HAPROXY_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # matched whole


def template_variables(text: str) -> list[str]:
    """Names used as ``{{ name }}`` in a query or setting."""
    return _TEMPLATE.findall(text)


def malformed_templates(text: str) -> list[str]:
    """Each ``{{`` (or a ``}}`` alone) that is not part of a ``{{ name }}`` template,
    as written (``{{ canary-version }}``, ``{{ service.__class__ }}``): rendering
    would leave it in the text, so a query with a typo would start and never match.
    A selector's own brace next to a template (``x{{{ labels }}}``) is no typo."""
    templated = [False] * len(text)
    for match in _TEMPLATE.finditer(text):
        templated[match.start() : match.end()] = [True] * (match.end() - match.start())
    found: list[str] = []
    for pair in ("{{", "}}"):
        for at in (m.start() for m in re.finditer(re.escape(pair), text)):
            if templated[at] or templated[at + 1]:
                continue
            if pair == "}}" and found:
                break  # the end of a typo already shown
            written = _written_at(text, at) if pair == "{{" else text[max(0, at - 20) : at + 2]
            found.append(_shortened(written))
    return found


def _written_at(text: str, at: int) -> str:
    """What was written from the ``{{`` at ``at`` to its first closing brace."""
    closing = text.find("}", at + 2)
    if closing < 0:
        return text[at:]
    return text[at : closing + (2 if text.startswith("}}", closing) else 1)]


def _shortened(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_template(text: str, values: dict[str, str]) -> str:
    """Fill ``{{ name }}`` placeholders; unknown names were refused when the plan loaded."""
    return _TEMPLATE.sub(lambda m: values[m.group(1)], text)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_template(value: str, info: ValidationInfo) -> str:
    """Known variables are the built-in ones plus those the plan declares; the loader
    passes the declared names in the validation context."""
    if not value or not value.strip():
        raise ValueError("template must not be empty")
    # str(): the declared names come from the input, which the model has not checked yet.
    declared = tuple(str(name) for name in (info.context or {}).get("variables", ()))
    known = (*TEMPLATE_VARIABLES, *declared)
    unknown = [n for n in template_variables(value) if n not in known]
    if unknown:
        raise ValueError(
            f"unknown template variable(s) {', '.join(sorted(set(unknown)))}; "
            f"known: {', '.join(known)}"
        )
    # A plan a rollout stored before this rule still loads: its text renders as it did.
    malformed = [] if (info.context or {}).get("stored") else malformed_templates(value)
    if malformed:
        raise ValueError(template_typo_message(malformed, known))
    if value.count("{{") != value.count("}}"):
        raise ValueError("unbalanced '{{' / '}}' in query template")
    return value


def template_typo_message(malformed: list[str], known: tuple[str, ...]) -> str:
    """Why each of ``malformed`` is no template, with the variable it may have meant."""
    shown = ", ".join(repr(text) for text in malformed)
    words = re.findall(r"[A-Za-z0-9_-]+", malformed[0].replace("__", " "))
    guesses = [
        close
        for word in words
        for close in difflib.get_close_matches(word.replace("-", "_"), known, n=1, cutoff=0.8)
    ]
    hint = f" (did you mean {{{{ {guesses[0]} }}}}?)" if guesses else ""
    return (
        f"{shown} is not a template: write {{{{ name }}}} with a known variable{hint}; "
        f"known: {', '.join(known)}"
    )


QueryTemplate = Annotated[str, AfterValidator(_check_template)]


class OnLimit(StrEnum):
    """What happens when a rollout has held too long on missing data or Prometheus errors."""

    PAUSE = "pause"
    ROLLBACK = "rollback"


DeadlinePolicy = Literal["notify", "rollback"]
DriftPolicy = Literal["reassert", "pause", "rollback"]


class AnalysisPolicy(_Strict):
    """How often to check, over what window, and how long to tolerate not knowing."""

    interval: Duration = Field(default=timedelta(minutes=1))
    window: Duration = Field(default=timedelta(minutes=5))
    inconclusive_limit: Count = Field(default=5, ge=1, le=1000)
    error_limit: Count = Field(default=5, ge=1, le=1000)
    on_limit: OnLimit = OnLimit.PAUSE
    progress_deadline: Annotated[Duration, AfterValidator(_at_least_one_second)] = Field(
        default=timedelta(hours=1),
        description="How long a rollout may sit paused, blocked or awaiting approval while "
        "the canary carries traffic before on_progress_deadline applies.",
    )
    on_progress_deadline: DeadlinePolicy = Field(default="notify")
    on_drift: DriftPolicy = Field(
        default="reassert",
        description="When the router does not show the recorded weight: set it again "
        "(reassert), pause for a human, or roll back.",
    )

    @field_validator("interval", "window")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 1:
            raise ValueError("must be at least 1s")
        return value


def _at_least_one_second(value: timedelta | None) -> timedelta | None:
    if value is not None and value.total_seconds() < 1:
        raise ValueError("must be at least 1s")
    return value


class _Criterion(_Strict):
    name: str = Field(pattern=_NAME, max_length=64)
    description: str = ""
    window: Annotated[Duration | None, AfterValidator(_at_least_one_second)] = None
    stages: list[str] | None = Field(
        default=None, description="Stage names this criterion applies to; all when omitted."
    )

    def queries(self) -> dict[str, str]:
        """The PromQL templates of this criterion by role."""
        raise NotImplementedError


def _confidence_field() -> Any:
    return Field(
        default=0.99,
        gt=0.5,
        lt=1.0,
        description="How sure the evidence must make us that the canary is over the limit "
        "before it fails: a one-sided exact binomial test of its errors against the limit "
        "fails only when p < 1 - confidence. Over the limit but not that sure: inconclusive "
        "(the rollout holds and keeps measuring; it neither promotes nor rolls back).",
    )


class _CountsErrors(_Criterion):
    """A criterion that counts errors (or failures) against a total."""

    absent_errors_are_zero: bool = Field(
        default=True,
        description="An error query with no series while its total shows traffic counts "
        "as 0 errors (services that create error series on the first error); for a "
        "zero_tolerance criterion without a total, while another criterion of the same "
        "check counts at least min_requests canary requests. Off: no data, inconclusive.",
    )


class RatioToBaseline(_CountsErrors):
    """Canary error proportion against the stable version's, over the same window."""

    judge: Literal["ratio_to_baseline"]
    canary_errors: QueryTemplate
    canary_total: QueryTemplate
    baseline_errors: QueryTemplate
    baseline_total: QueryTemplate
    factor: Number = Field(default=2.0, ge=1.0, le=1000)
    floor: Number = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Smallest error proportion that can trip, so a near-zero baseline "
        "does not roll back on one error.",
    )
    min_requests: Count = Field(default=100, ge=1, le=1_000_000_000)
    confidence: Number = _confidence_field()
    sustained_for: Duration = Field(default=timedelta(0))

    def queries(self) -> dict[str, str]:
        return {
            "canary_errors": self.canary_errors,
            "canary_total": self.canary_total,
            "baseline_errors": self.baseline_errors,
            "baseline_total": self.baseline_total,
        }


class RatioThreshold(_CountsErrors):
    """A proportion of the canary's requests (auth failures, say) above a fixed limit."""

    judge: Literal["ratio_threshold"]
    errors: QueryTemplate
    total: QueryTemplate
    max_ratio: Number = Field(ge=0.0, le=1.0)
    min_requests: Count = Field(default=100, ge=1, le=1_000_000_000)
    confidence: Number = _confidence_field()
    sustained_for: Duration = Field(default=timedelta(0))

    def queries(self) -> dict[str, str]:
        return {"errors": self.errors, "total": self.total}


class RisingTrend(_Criterion):
    """A series that keeps rising over the window (queue lag): a Mann-Kendall trend test
    with Sen's slope, not one high value; and, optionally, a ceiling that trips even a
    flat series (a lag stuck high is as bad as one climbing)."""

    judge: Literal["rising_trend"]
    series: QueryTemplate
    step: Annotated[Duration, AfterValidator(_at_least_one_second)] = Field(
        default=timedelta(seconds=15)
    )
    min_points: Count = Field(default=5, ge=4, le=11000)
    confidence: Number = Field(
        default=0.99,
        gt=0.5,
        lt=1.0,
        description="Mann-Kendall: the series rises when the test's one-sided p-value is "
        "below 1 - confidence.",
    )
    min_slope: Number = Field(
        default=0.0,
        ge=0.0,
        le=1e12,
        description="Smallest rise per second (Sen's slope) that counts: a significant but "
        "negligible drift passes.",
    )
    min_rise: Number = Field(
        default=0.0,
        ge=0.0,
        le=1e15,
        description="Smallest rise over the window (Sen's slope x the window's span).",
    )
    ceiling: Number | None = Field(
        default=None,
        ge=-1e15,
        le=1e15,
        description="A median over the window above this fails whatever the trend.",
    )
    sustained_for: Duration = Field(default=timedelta(0))

    @model_validator(mode="before")
    @classmethod
    def _no_vote(cls, data: Any) -> Any:
        if isinstance(data, dict) and "rising_fraction" in data:
            raise ValueError(
                "rising_fraction is gone: a vote on steps let a lag with a dip every few "
                "steps pass; rising_trend now uses a Mann-Kendall test (confidence, "
                "min_slope, min_rise, ceiling): remove rising_fraction"
            )
        return data

    def queries(self) -> dict[str, str]:
        return {"series": self.series}


class LatencyToBaseline(_Criterion):
    """A latency quantile of the canary against the stable version's over the same
    window (p95/p99 from histograms): above ``factor`` x the baseline's and above
    ``floor_ms`` fails."""

    judge: Literal["latency_to_baseline"]
    canary_latency: QueryTemplate = Field(
        description="Seconds, e.g. histogram_quantile(0.99, sum by (le) (rate(..._bucket"
        "{version=canary}[window])))"
    )
    baseline_latency: QueryTemplate
    quantile: str = Field(default="p99", max_length=16, description="How sentences name it.")
    factor: Number = Field(default=1.5, ge=1.0, le=1000)
    floor_ms: Number = Field(
        default=50.0,
        ge=0.0,
        description="Latency below which the canary never fails, however it compares.",
    )
    sustained_for: Duration = Field(default=timedelta(0))

    def queries(self) -> dict[str, str]:
        return {"canary_latency": self.canary_latency, "baseline_latency": self.baseline_latency}


class ZeroTolerance(_CountsErrors):
    """Failed writes or corruption indicators: any count above ``max`` trips at once."""

    judge: Literal["zero_tolerance"]
    failures: QueryTemplate
    total: QueryTemplate | None = Field(
        default=None, description="Requests in the window; without enough, zero means nothing."
    )
    max: Number = Field(default=0.0, ge=0.0, le=1e15)
    min_requests: Count = Field(default=1, ge=1, le=1_000_000_000)
    sustained_for: Duration = Field(default=timedelta(0))

    def queries(self) -> dict[str, str]:
        found = {"failures": self.failures}
        if self.total is not None:
            found["total"] = self.total
        return found


Criterion = RatioToBaseline | RatioThreshold | RisingTrend | LatencyToBaseline | ZeroTolerance
StopCriterion = Annotated[Criterion, Field(discriminator="judge")]


class HttpCheck(_Strict):
    """An HTTP check: a health endpoint or one step of a core user journey."""

    name: str = Field(pattern=_NAME, max_length=64)
    url: QueryTemplate
    method: Literal["GET", "HEAD", "POST"] = "GET"
    expect_status: Count = Field(default=200, ge=100, le=599)
    body_contains: str | None = None
    timeout: StepTimeout = Field(default=timedelta(seconds=5))
    max_latency: Duration | None = None


class HttpHook(_Strict):
    """An HTTP call the runbook makes, e.g. to scale the canary to zero.

    A deploy API's URL often carries its credential (a token in the path or the
    query), and plans are stored and shown: ``url_env`` names an environment variable
    of the workers that holds the URL instead, as notifications do. That URL is used
    as it is (no templates: put the rollout's values in ``json_body``)."""

    url: QueryTemplate | None = None
    url_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        max_length=128,
        description="An environment variable of the workers holding the URL (a secret "
        "URL stays out of the plan).",
    )
    method: Literal["GET", "POST", "PUT", "DELETE", "PATCH"] = "POST"
    json_body: dict[str, Any] | None = None
    timeout: StepTimeout = Field(default=timedelta(seconds=10))

    @model_validator(mode="after")
    def _one_url(self) -> HttpHook:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url or url_env")
        return self


class CanaryDisable(_Strict):
    """How to disable the canary's artifacts: a command or an HTTP call (exactly one)."""

    command: list[QueryTemplate] | None = Field(default=None, min_length=1)
    http: HttpHook | None = None
    timeout: HookTimeout = Field(default=timedelta(seconds=60))

    @model_validator(mode="after")
    def _exactly_one(self) -> CanaryDisable:
        if (self.command is None) == (self.http is None):
            raise ValueError("give exactly one of command or http")
        return self


def hook_variables(hook: CanaryDisable) -> set[str]:
    """Template variables a hook uses anywhere (argv, URL, JSON body)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            found.update(template_variables(node))
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(hook.model_dump(mode="json"))
    return found


class Runbook(_Strict):
    """The rollback runbook's steps after traffic is back on stable."""

    stable_healthchecks: list[HttpCheck] = Field(default_factory=list)
    smoke_checks: list[HttpCheck] = Field(default_factory=list)
    disable_canary: CanaryDisable | None = None


class AlertRule(_Strict):
    """Which Alertmanager alerts roll a rollout back, in Alertmanager's matcher syntax
    (``severity="critical"``, ``team=~"pay.*"``). The alert must also carry the
    rollout's service in ``service_label``. The plan loader parses the matchers and
    the alert webhook matches with the same parser (``controller.plan_checks``)."""

    matchers: list[str] = Field(default_factory=lambda: ['severity="critical"'])
    service_label: str = Field(default="service", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class CommandCheck(_Strict):
    """A command that must exit 0: a CI status script, a pytest smoke suite."""

    name: str = Field(pattern=_NAME, max_length=64)
    command: list[QueryTemplate] = Field(min_length=1)
    timeout: StepTimeout = Field(default=timedelta(seconds=30))


class SmokeSuite(_Strict):
    """Checks that must all pass: HTTP journeys and commands, judged by status and exit code."""

    http: list[HttpCheck] = Field(default_factory=list)
    commands: list[CommandCheck] = Field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.http or self.commands)


class TargetsUp(_Strict):
    """Prometheus says the service's scrape targets are up (every series of ``query`` is 1)."""

    name: str = Field(pattern=_NAME, max_length=64)
    query: QueryTemplate
    min_targets: Count = Field(default=1, ge=1, le=100_000)


class ApprovalGate(_Strict):
    role: str = Field(pattern=r"^[a-z][a-z0-9_]*$")


class Gates(_Strict):
    """Go/no-go gates checked before any traffic moves (seed plan §1). A failing gate
    blocks the rollout with its reason; blocked rollouts are checked again every
    ``recheck_interval`` and at once after ``canary recheck`` or an approval."""

    recheck_interval: Annotated[Duration, AfterValidator(_at_least_one_second)] = Field(
        default=timedelta(minutes=1)
    )
    targets_up: list[TargetsUp] = Field(default_factory=list)
    http: list[HttpCheck] = Field(default_factory=list)
    no_firing_alerts: QueryTemplate | None = Field(
        default=None, description="PromQL for the service's firing alerts; none may be firing."
    )
    commands: list[CommandCheck] = Field(default_factory=list)
    approvals: list[ApprovalGate] = Field(default_factory=list)


class SoakLoad(_Strict):
    """Bounded synthetic load during the soak, sent by the advances themselves."""

    url: QueryTemplate
    rate: Number = Field(
        gt=0,
        le=20,
        description="Requests per second; a burst of at most 10 s worth (200 requests) is "
        "sent at each advance of the soak, which comes back every 10 s at the latest.",
    )
    max_error_ratio: Number = Field(default=0.05, ge=0, le=1)


class Backlog(_Strict):
    """No backlog in async workers: ``query`` (one series) at or under ``max``."""

    query: QueryTemplate
    max: Number = Field(ge=0, le=1e15)


class _Stage(_Strict):
    name: str = Field(pattern=_NAME, max_length=64)
    approval: list[str] = Field(
        default_factory=list,
        description="Owner roles that must approve before the stage begins.",
    )


class SoakStage(_Stage):
    """Staging soak: no production traffic moves; the criteria watch the staging environment."""

    kind: Literal["soak"]
    duration: Duration
    environment: str = Field(default="staging", pattern=_NAME)
    load: SoakLoad | None = None
    smoke: SmokeSuite = SmokeSuite()
    healthchecks: list[HttpCheck] = Field(
        default_factory=list,
        description="Checked at every advance of the soak; one failure fails the soak.",
    )
    alerts_quiet: QueryTemplate | None = Field(
        default=None,
        description="PromQL for the service's firing P0/P1 alerts; none may fire when the "
        "soak ends.",
    )


def _measured_at_its_weight(value: timedelta, info: ValidationInfo) -> timedelta:
    """A step that moves canary traffic is promoted only once it was measured at its
    own weight: the check that moves the traffic judges data from before the move, so
    ``hold: 0s`` would promote a step nothing ever measured. (A plan a rollout stored
    before this rule still loads.)"""
    if value < timedelta(seconds=1) and not (info.context or {}).get("stored"):
        raise ValueError(
            f"{format_duration(value)} would promote the step on data from before its "
            "traffic moved; hold it at least 1s, so that a check measures it at its own weight"
        )
    return value


StepHold = Annotated[Duration, AfterValidator(_measured_at_its_weight)]


class CanaryStage(_Stage):
    """The first slice of production traffic to the new version, held and compared."""

    kind: Literal["canary"]
    weight: Count = Field(ge=1, le=100)
    hold: StepHold


class RampStep(_Strict):
    weight: Count = Field(ge=1, le=100)
    hold: StepHold


class RampStage(_Stage):
    """Progressive ramp: each step sets an absolute weight and holds while criteria pass."""

    kind: Literal["ramp"]
    steps: list[RampStep] = Field(min_length=1)


class VerifyStage(_Stage):
    """Post-deploy verification at full traffic before the release is called stable."""

    kind: Literal["verify"]
    duration: Duration
    smoke: SmokeSuite = SmokeSuite()
    alerts_quiet: QueryTemplate | None = Field(
        default=None, description="PromQL for the service's firing alerts; none may fire."
    )
    backlog: Backlog | None = None


Stage = Annotated[SoakStage | CanaryStage | RampStage | VerifyStage, Field(discriminator="kind")]


class SlotMode(StrEnum):
    """How the release that succeeded becomes the stable one.

    ``swap`` (blue/green): the slot that carries 100 % at the end becomes the stable
    slot; the next rollout deploys into the other one. ``redeploy``: a hook deploys
    the new version into the stable slot, the controller waits until that slot serves
    it, then moves all traffic back to it.
    """

    SWAP = "swap"
    REDEPLOY = "redeploy"


class RedeployHook(CanaryDisable):
    """Deploys the new version into the stable slot. It runs inside a rollout step, so
    it must start the deploy and return (the controller waits for the version check)."""

    timeout: StepTimeout = Field(default=timedelta(seconds=20))


class VersionCheck(_Strict):
    """How to ask a slot which version it serves: ``GET <slot url><path>``, a JSON
    object whose ``field`` holds the version."""

    path: str = Field(default="/version", pattern=r"^/[A-Za-z0-9_./~-]*$", max_length=256)
    field: str = Field(default="version", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)
    timeout: Annotated[StepTimeout, AfterValidator(_at_least_one_second)] = Field(
        default=timedelta(seconds=2)
    )


class HAProxyTraffic(_Strict):
    """Where the service's traffic is split: one HAProxy backend with two servers (slots).

    In ``swap`` mode the two servers take turns being stable: ``stable_server`` is the
    stable slot of the service's first rollout, after that the store remembers which
    slot is stable. In ``redeploy`` mode the roles never change.
    """

    router: Literal["haproxy"] = "haproxy"
    backend: QueryTemplate = "{{ service }}"
    stable_server: str = Field(default="stable", pattern=_HAPROXY_NAME, max_length=64)
    canary_server: str = Field(default="canary", pattern=_HAPROXY_NAME, max_length=64)
    mode: SlotMode = SlotMode.SWAP
    slot_urls: dict[str, QueryTemplate] = Field(
        default_factory=dict,
        description="Where each server answers directly, by server name; gives the "
        "templates {{ stable_url }} and {{ canary_url }} and enables version checks.",
    )
    version_check: VersionCheck | None = Field(
        default=None,
        description="At every advance, each slot must serve its version (needs slot_urls).",
    )
    redeploy: RedeployHook | None = Field(
        default=None,
        description="mode redeploy: the hook that deploys the new version into the stable "
        "slot (a command or an HTTP call).",
    )
    redeploy_timeout: Annotated[Duration, AfterValidator(_at_least_one_second)] = Field(
        default=timedelta(minutes=10),
        description="mode redeploy: how long the stable slot may take to serve the new "
        "version before the rollout pauses for a human.",
    )
    redeploy_settle: Duration = Field(
        default=timedelta(seconds=10),
        description="mode redeploy: how long the stable slot must serve the new version "
        "with the router holding it up, without a change, before traffic moves back to "
        "it; at least HAProxy's fall x inter, the time it takes to notice a restart "
        "(0s: at once).",
    )

    @field_validator("backend")
    @classmethod
    def _backend_name(cls, value: str) -> str:
        # Templates are checked again by the router once rendered.
        if not re.fullmatch(_HAPROXY_NAME, _TEMPLATE.sub("x", value)):
            raise ValueError("a backend name may only hold letters, digits, _ . : - and templates")
        return value

    @model_validator(mode="after")
    def _slots(self, info: ValidationInfo) -> HAProxyTraffic:
        servers = {self.stable_server, self.canary_server}
        if len(servers) != 2:
            raise ValueError("stable_server and canary_server must be two different servers")
        if self.slot_urls and set(self.slot_urls) != servers:
            raise ValueError(
                f"slot_urls: give the URL of exactly the servers {sorted(servers)}, "
                f"not {sorted(self.slot_urls)}"
            )
        if self.version_check and not self.slot_urls:
            raise ValueError("version_check needs slot_urls (where each slot answers)")
        if self.mode == SlotMode.REDEPLOY:
            if self.redeploy is None:
                raise ValueError("mode redeploy needs a redeploy hook (command or http)")
            stored = bool((info.context or {}).get("stored"))
            if not stored and "deploy_version" not in hook_variables(self.redeploy):
                raise ValueError(
                    "redeploy: name the version to deploy as {{ deploy_version }}, not "
                    "{{ canary_version }}: the hook deploys the new version when the release "
                    "is promoted, and the stable version back when a rollback comes after it"
                )
            if self.version_check is None:
                raise ValueError(
                    "mode redeploy needs version_check: the controller must see the stable "
                    "slot serve the new version before it moves traffic back to it"
                )
        elif self.redeploy is not None:
            raise ValueError("redeploy is only used with mode: redeploy")
        return self

    def other_slot(self, slot: str) -> str:
        """The other of the two servers."""
        return self.canary_server if slot == self.stable_server else self.stable_server


def _person(value: str, info: ValidationInfo) -> str:
    """An owner is who approves, and an approval is recorded as the approver's token
    name: a name no token can have ("   ", "alice\\n") is an approval nobody can give.
    (A plan a rollout stored before this rule still loads.)"""
    problem = None if (info.context or {}).get("stored") else person_name_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r} cannot be an approver's name: {problem}")
    return value


class Plan(_Strict):
    """A whole rollout plan as loaded from YAML."""

    name: str = Field(pattern=_NAME, max_length=64)
    description: str = ""
    variables: dict[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")], str] = Field(
        default_factory=dict,
        description="Plan-specific template variables with their defaults; a rollout may "
        "override them (canary start --var name=value).",
    )
    overridable: dict[
        Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")],
        Annotated[str, Field(min_length=1, max_length=500)],
    ] = Field(
        default_factory=dict,
        description="Variables a start may override, each with the regular expression "
        "its value must match in full; every other variable keeps the plan's value. A "
        "plan is reviewed once, so what a start may change is part of the review.",
    )
    traffic: HAProxyTraffic = HAProxyTraffic()
    analysis: AnalysisPolicy = AnalysisPolicy()
    stages: list[Stage] = Field(min_length=1)
    stop_criteria: list[StopCriterion] = Field(min_length=1)
    owners: dict[
        Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")],
        list[Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_person)]],
    ] = Field(
        default_factory=dict,
        description="Named people by role (release_manager, ...): each an API token's "
        "name (or the OS login name of someone using the CLI on the database).",
    )
    gates: Gates = Gates()
    alerts: AlertRule = AlertRule()
    runbook: Runbook = Runbook()
    notifications: list[NotificationTarget] = Field(default_factory=list)

    @field_validator("overridable")
    @classmethod
    def _patterns_compile(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        stored = bool((info.context or {}).get("stored"))
        for name, pattern in value.items():
            try:
                compile_pattern(pattern, stored=stored)
            except PatternError as exc:
                raise ValueError(f"{name}: not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _overridable_are_declared(self) -> Plan:
        unknown = [name for name in self.overridable if name not in self.variables]
        if unknown:
            raise ValueError(
                f"overridable: {', '.join(unknown)} not among the plan's variables "
                f"({', '.join(self.variables) or 'none'})"
            )
        return self

    def override_problem(self, name: str, value: str) -> str | None:
        """Why a start may not set variable ``name`` to ``value``, or None."""
        if name not in self.variables:
            return f"the plan does not declare it (declared: {', '.join(self.variables) or 'none'})"
        pattern = self.overridable.get(name)
        if pattern is None:
            allowed = ", ".join(self.overridable) or "none"
            return f"plan {self.name} does not let a start override it (overridable: {allowed})"
        if not matches_whole(compile_pattern(pattern), value):
            return f"{value!r} does not match the plan's pattern {pattern!r}"
        return None

    @model_validator(mode="after")
    def _backend_variables_are_names(self) -> Plan:
        """A plan variable used in ``traffic.backend`` must default to something a
        HAProxy backend name can hold: ``x;disable server x/blue`` is bad input here,
        not a router that cannot be reached at start."""
        for name in template_variables(self.traffic.backend):
            default = self.variables.get(name)
            if default is not None and not HAPROXY_NAME.fullmatch(_TEMPLATE.sub("x", default)):
                raise ValueError(
                    f"variables.{name}: {default!r} is used in traffic.backend and is not a "
                    "HAProxy backend name (letters, digits, _ . : - only)"
                )
        return self

    @model_validator(mode="after")
    def _slot_urls_are_builtins(self) -> Plan:
        if self.traffic.slot_urls:
            clash = [n for n in SLOT_URL_VARIABLES if n in self.variables]
            if clash:
                raise ValueError(
                    f"variables: {', '.join(clash)} come from traffic.slot_urls (the slot "
                    "that is stable or canary changes between rollouts); do not declare them"
                )
        return self

    def commands(self) -> list[list[str]]:
        """Every command this plan would run on a worker."""
        found = [c.command for c in self.gates.commands]
        for stage in self.stages:
            smoke = getattr(stage, "smoke", None)
            found += [c.command for c in smoke.commands] if smoke else []
        if self.runbook.disable_canary and self.runbook.disable_canary.command:
            found.append(self.runbook.disable_canary.command)
        if self.traffic.redeploy and self.traffic.redeploy.command:
            found.append(self.traffic.redeploy.command)
        found += [n.command for n in self.notifications if n.command]
        return found

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Plan:
        """Validate plan data given as input (YAML, a request), with its declared
        variables known to the template checks."""
        return cls._validated(data, stored=False)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Plan:
        """A plan as a rollout stored it when it started. Validated again, but what was
        accepted then still loads after an upgrade that tightened a check (its
        patterns: ``controller.regex_input``): a rollout whose plan no longer loaded
        could not even be rolled back."""
        return cls._validated(data, stored=True)

    @classmethod
    def _validated(cls, data: dict[str, Any], stored: bool) -> Plan:
        declared = data.get("variables") if isinstance(data, dict) else None
        names = list(declared) if isinstance(declared, dict) else []
        traffic = data.get("traffic") if isinstance(data, dict) else None
        if isinstance(traffic, dict) and traffic.get("slot_urls"):
            names += [n for n in SLOT_URL_VARIABLES if n not in names]
        return cls.model_validate(data, context={"variables": names, "stored": stored})

    def template_values(
        self, builtins: dict[str, str], overrides: dict[str, str] | None = None
    ) -> dict[str, str]:
        """Values for every template: the built-ins, and each plan variable from the
        rollout's overrides or the plan's default (which may use built-ins)."""
        values = {"window": format_duration(self.analysis.window), **builtins}
        for name, default in self.variables.items():
            values[name] = render_template((overrides or {}).get(name, default), builtins)
        slots = self.traffic.slot_urls
        for role in ("stable", "canary"):
            slot = builtins.get(f"{role}_slot")
            if slots and slot in slots:
                values[f"{role}_url"] = render_template(slots[slot], values)
        return values

    def steps(self) -> list[Step]:
        """The plan flattened into the steps a rollout walks, one hold each."""
        steps: list[Step] = []
        weight = 0
        for stage in self.stages:
            if isinstance(stage, SoakStage):
                steps.append(
                    Step(len(steps), stage.name, "soak", weight, stage.duration, stage.environment)
                )
            elif isinstance(stage, CanaryStage):
                weight = stage.weight
                steps.append(Step(len(steps), stage.name, "canary", weight, stage.hold))
            elif isinstance(stage, RampStage):
                for step in stage.steps:
                    weight = step.weight
                    steps.append(Step(len(steps), stage.name, "ramp", weight, step.hold))
            else:
                steps.append(Step(len(steps), stage.name, "verify", weight, stage.duration))
        return steps

    def criteria_for(self, stage_name: str) -> list[Criterion]:
        """Stop criteria that apply during a stage."""
        return [c for c in self.stop_criteria if c.stages is None or stage_name in c.stages]


@dataclass(frozen=True)
class Step:
    """One hold of a rollout: a stage, the canary weight during it, and how long it lasts."""

    index: int
    stage: str
    kind: str
    weight: int
    hold: timedelta
    environment: str = "production"

    @property
    def label(self) -> str:
        return f"{self.stage} {self.weight}%" if self.kind in ("canary", "ramp") else self.stage


class _PlanSchema(GenerateJsonSchema):
    """Defaults as plans write them: ``1m``, not ISO 8601's ``PT1M``."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        return super().encode_default(dft)


def plan_json_schema() -> dict[str, Any]:
    """JSON Schema of a plan file, for editors (``canary plan schema``)."""
    schema = Plan.model_json_schema(schema_generator=_PlanSchema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
