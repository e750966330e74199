"""A plan's notification targets, as the plan model validates them. Kept apart from
``controller.notifications``, which sends them: a plan's model must not import the
code that reaches the network (it closed an import circle through the URL policy)."""

from __future__ import annotations

from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.numbers import Number

LifecycleKind = Literal[
    "started",
    "stage_changed",
    "paused",
    "blocked",
    "progress_deadline",
    "rolled_back",
    "rollback_failed",
    "succeeded",
]
LIFECYCLE_KINDS: tuple[str, ...] = get_args(LifecycleKind)


def is_http_url(value: str) -> bool:
    """Only http(s) with a host: a ``file:`` or bare-path URL is a mistake, not a receiver."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class NotificationTarget(BaseModel):
    """One receiver of lifecycle events, as written in a plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    kind: Literal["webhook", "slack", "command"]
    url: str | None = None
    url_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)
    command: list[str] | None = Field(default=None, min_length=1)
    events: list[LifecycleKind] = Field(default_factory=lambda: list(LIFECYCLE_KINDS), min_length=1)
    timeout_seconds: Number = Field(default=3.0, gt=0, le=30)

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if value is not None and not is_http_url(value):
            raise ValueError("url must be an http:// or https:// URL with a host")
        return value

    @field_validator("command")
    @classmethod
    def _program_named(cls, value: list[str] | None) -> list[str] | None:
        if value and not value[0].strip():
            raise ValueError("command[0] must name a program")
        return value

    @model_validator(mode="after")
    def _fields_match_kind(self) -> NotificationTarget:
        if self.kind == "command":
            if self.command is None:
                raise ValueError("kind 'command' needs command (an argv list)")
            if self.url is not None or self.url_env is not None:
                raise ValueError("url and url_env are not used by kind 'command'; remove them")
            return self
        if self.command is not None:
            raise ValueError(f"command is only for kind 'command', not {self.kind!r}")
        if self.url is not None and self.url_env is not None:
            raise ValueError("give url or url_env, not both")
        if self.url is None and self.url_env is None:
            raise ValueError(f"kind {self.kind!r} needs url or url_env")
        return self


__all__ = ["LIFECYCLE_KINDS", "LifecycleKind", "NotificationTarget", "is_http_url"]
