"""Request bodies of the HTTP API; unknown fields are refused, like in plan files."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StartRollout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str | None = Field(None, description="Name of a plan in the plans directory")
    plan_yaml: str | None = Field(None, description="A whole plan as YAML text")
    service: str
    version: str
    stable: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)
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
