"""Request bodies of the HTTP API; unknown fields are refused, like in plan files."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StartRollout(BaseModel):
    model_config = ConfigDict(extra="forbid")

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


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(min_length=1, max_length=4000, description="What was done, for the audit")


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=2000)


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str | None = Field(None, description="Approve only as this role")
    stage: str | None = Field(None, description="preflight or a stage; default: where it waits")


class RegisterPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64, description="The name operators start it by")
    plan_yaml: str = Field(max_length=1_000_000, description="The whole plan as YAML text")
    note: str = Field("", max_length=2000, description="What changed, for the audit")
