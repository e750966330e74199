"""Request bodies of the HTTP API; unknown fields are refused, like in plan files."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.input_text import refuse_nul

# Names in paths and queries: what rollout ids, incident ids, services and plan names
# are made of. Anything else cannot exist, so it is a 422 at once, not a lookup.
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$"
RolloutId = Annotated[str, Path(pattern=_NAME, description="A rollout id, e.g. r-3f9c2a1b7d")]
IncidentId = Annotated[str, Path(pattern=_NAME, description="An incident id, e.g. inc-a1b2c3d4e5")]
ServiceName = Annotated[str, Path(pattern=_NAME, description="A service name")]
PlanName = Annotated[str, Path(pattern=_NAME, description="A registered plan's name")]
ServiceFilter = Annotated[str | None, Query(pattern=_NAME, description="Only this service")]
PlanVersion = Annotated[
    int | None, Query(ge=1, le=1_000_000, description="A version; default: the latest")
]
ListLimit = Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first")]


class _Body(BaseModel):
    """A request body: unknown fields refused, and no text the store cannot hold."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return refuse_nul(value)


class StartRollout(_Body):
    plan: str | None = Field(
        None,
        max_length=64,
        description="Name of a registered plan (or of a file in the plans directory)",
    )
    plan_version: int | None = Field(
        None, ge=1, le=1_000_000, description="A registered plan's version; default: latest"
    )
    plan_yaml: str | None = Field(
        None, max_length=1_000_000, description="admin only: a whole plan as YAML text"
    )
    service: str = Field(max_length=128)
    version: str = Field(max_length=128)
    stable: str | None = Field(None, max_length=128)
    variables: dict[str, str] = Field(default_factory=dict, max_length=100)
    force: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="admin only: start although the router or the stable version is not "
        "what the store expects; the reason is recorded",
    )

    @model_validator(mode="after")
    def _one_plan(self) -> StartRollout:
        if (self.plan is None) == (self.plan_yaml is None):
            raise ValueError("give exactly one of plan (a name) or plan_yaml (the text)")
        return self


class Note(_Body):
    note: str = Field(min_length=1, max_length=4000, description="What was done, for the audit")


class Reason(_Body):
    reason: str = Field("", max_length=2000)


class Resolve(_Body):
    reason: str = Field(
        min_length=1, max_length=2000, description="What was done to traffic, and why"
    )
    force: bool = Field(
        False,
        description="admin only: end it although the controller cannot confirm traffic on "
        "stable; recorded as aborted with traffic NOT confirmed",
    )


class Approval(_Body):
    role: str | None = Field(None, max_length=128, description="Approve only as this role")
    stage: str | None = Field(
        None, max_length=128, description="preflight or a stage; default: where it waits"
    )


class RegisterPlan(_Body):
    name: str = Field(max_length=64, description="The name operators start it by")
    plan_yaml: str = Field(max_length=1_000_000, description="The whole plan as YAML text")
    note: str = Field("", max_length=2000, description="What changed, for the audit")


class Outcome(BaseModel):
    """What an action on a rollout did. ``accepted`` is false only with a 409, and
    ``message`` then says what state refused it."""

    rollout_id: str
    accepted: bool
    message: str


class Problem(BaseModel):
    """One thing wrong with a request, located so a client can point at the field."""

    loc: list[str | int] = Field(description="Where: e.g. body, service; or plan, stages, 0")
    msg: str
    line: int | None = Field(None, description="For a plan: the line in its YAML, if known")


class ErrorBody(BaseModel):
    """Every refusal: a sentence (401, 403, 404, 413, 503) or the problems found (422,
    and a 409 that names a field)."""

    detail: str | list[Problem]


class Readiness(BaseModel):
    """``/readyz``: 200 when every dependency answers, 503 with the same body if not."""

    ready: bool
    checks: dict[str, str] = Field(description="database, redis, prometheus: ok or the error")
