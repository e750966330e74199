"""Settings from the environment (``CANARY_*``), validated once at start-up.

Everything that differs between a laptop, CI and production lives here: where the
database, the broker, Prometheus and the traffic router are. Secrets (passwords in
URLs, tokens) only ever come from here, never from plan files.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config import PLANS_DIR
from config.host_lists import parse_allowed_hosts
from controller.timeouts import STEP_BUDGET_SECONDS

REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel")
# A task's soft time limit comes this long before its hard one, so that a step that
# ran out of time can still record that it did (controller.timeouts).
SOFT_LIMIT_MARGIN_SECONDS = 5.0


class Settings(BaseSettings):
    """The controller's configuration; see docs/operations/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="CANARY_", extra="ignore")

    database_url: str = Field(
        "sqlite:///canary.db",
        description="SQLAlchemy URL of the state store (SQLite file or PostgreSQL).",
    )
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis).")
    result_backend: str | None = Field(
        None, description="Celery result backend; defaults to the broker URL."
    )
    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus base URL.")
    prometheus_timeout_seconds: float = Field(2.0, gt=0, le=60)
    prometheus_attempts: int = Field(2, ge=1, le=10)
    haproxy_socket: str = Field(
        "/run/haproxy/admin.sock", description="HAProxy runtime API socket (level admin)."
    )
    haproxy_timeout_seconds: float = Field(2.0, gt=0, le=30)
    query_batch_slot_seconds: float = Field(
        5.0,
        ge=0,
        le=60,
        description="Stop-criterion queries shared by many rollouts are asked once per slot "
        "of this many seconds (at most half a plan's interval) for all of them; 0 asks "
        "every rollout's queries on their own.",
    )
    share_query_answers: bool = Field(
        True,
        description="Worker processes share the answers of batched queries through the "
        "broker's Redis (redis:// or rediss://): one process of all workers asks each "
        "query per slot. Off, or with another broker URL, each process asks its own.",
    )
    advance_batch_size: int = Field(
        20,
        ge=1,
        le=200,
        description="Rollouts due at the same moment (within 0.5 s) checked by one task, "
        "one after the other, each under its own lease and transaction: at hundreds of "
        "rollouts a task per check costs more in handing out than in checking. 1 gives "
        "every check a task of its own.",
    )
    spread_checks: bool = Field(
        True,
        description="Each rollout's checks fall at a phase of its own within the plan's "
        "interval (a hash of its id), so rollouts started together are checked spread "
        "over the interval, not all in the same second; a step's first check then "
        "comes between one and two intervals after the step began. Off: exactly one.",
    )
    reconcile_interval_seconds: float = Field(
        2.0, gt=0, le=60, description="How often beat fires the reconcile task."
    )
    lease_seconds: float = Field(
        45.0, gt=5, le=600, description="How long an advance or rollback owns a rollout."
    )
    task_time_limit_seconds: float = Field(
        40.0,
        gt=1,
        le=600,
        description="Hard time limit of every task; below lease_seconds, and its soft limit "
        "(5 s earlier) above the time one advance of a plan may take (30 s).",
    )
    runbook_claim_seconds: float = Field(
        120.0,
        ge=3,
        le=600,
        description="How long a runbook's delivery holds its outbox row before another "
        "delivery may take it.",
    )
    outbox_redispatch_seconds: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="An outbox row (runbook, notification) sent this long ago, not done "
        "and not held by a running delivery, is sent again.",
    )
    rollback_attempts: int = Field(5, ge=1, le=20)
    rollback_backoff_seconds: float = Field(0.2, ge=0, le=10)
    queue_prefix: str = Field(
        "canary", description="Prefix of the Celery queues, so several installs share a Redis."
    )
    incident_webhook_url: SecretStr | None = Field(
        None, description="Where the rollback runbook posts incidents (JSON); may hold a token."
    )
    incident_webhook_token: SecretStr | None = Field(
        None, description="Bearer token sent with incident posts."
    )
    api_tokens: SecretStr | None = Field(
        None,
        description="API tokens as comma-separated name:role:token (roles: viewer, "
        "operator, admin).",
    )
    alertmanager_token: SecretStr | None = Field(
        None, description="Bearer token Alertmanager sends to the webhook."
    )
    metrics_token: SecretStr | None = Field(
        None, description="If set, /metrics of the API requires this bearer token."
    )
    api_url: str | None = Field(
        None,
        description="For the CLI: act through this API (with CANARY_TOKEN) instead of on "
        "the database, so the token's identity is what is recorded.",
    )
    token: SecretStr | None = Field(None, description="For the CLI: the API token to act with.")
    allowed_url_hosts: str = Field(
        "",
        description="Hosts a plan's URLs (checks, hooks, notifications, slot URLs) may "
        "name, comma-separated: host names with * wildcards, IP addresses or networks "
        "(10.0.0.0/8). Empty: any host but link-local and cloud metadata addresses, "
        "which are always refused.",
    )
    api_max_body_bytes: int = Field(1_000_000, ge=1_000, le=100_000_000)
    plans_dir: Path = Field(PLANS_DIR, description="Where the API finds plans by name.")
    flower_user: str | None = Field(None, description="Flower basic-auth user.")
    flower_password: SecretStr | None = Field(None, description="Flower basic-auth password.")
    log_json: bool | None = Field(
        None, description="JSON logs; by default JSON unless stderr is a terminal."
    )

    @property
    def task_soft_time_limit_seconds(self) -> float:
        """When a task is told it ran out of time, before it is killed."""
        return max(self.task_time_limit_seconds - SOFT_LIMIT_MARGIN_SECONDS, 1.0)

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError(
                "not a database URL: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
            ) from None
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"{backend!r} is not supported: use sqlite or postgresql")
        return value

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in REDIS_SCHEMES:
            raise ValueError("must be a Redis URL like redis://HOST:6379/0")
        return value

    @field_validator("prometheus_url", "api_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL like http://127.0.0.1:9090")
        return value

    @field_validator("allowed_url_hosts")
    @classmethod
    def _allowed_hosts(cls, value: str) -> str:
        parse_allowed_hosts(value)
        return value

    @field_validator("flower_user")
    @classmethod
    def _flower_user(cls, value: str | None) -> str | None:
        # Flower reads its credentials as "user:password,user:password".
        if value is not None and (":" in value or "," in value):
            raise ValueError("must not contain ':' or ','")
        return value

    @field_validator("flower_password")
    @classmethod
    def _flower_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and "," in value.get_secret_value():
            raise ValueError("must not contain ',': Flower would split it into two credentials")
        return value


class SettingsError(Exception):
    """Settings that cannot be used; the message names each field and its problem."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load settings once per process, turning validation errors into one readable message."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CANARY_{'_'.join(str(p) for p in err['loc']).upper()}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
    if settings.task_time_limit_seconds >= settings.lease_seconds:
        raise SettingsError(
            "invalid settings: CANARY_TASK_TIME_LIMIT_SECONDS must be below CANARY_LEASE_SECONDS "
            "so that a task is killed before another worker may take its rollout"
        )
    if settings.task_soft_time_limit_seconds <= STEP_BUDGET_SECONDS:
        hard, soft = settings.task_time_limit_seconds, settings.task_soft_time_limit_seconds
        raise SettingsError(
            f"invalid settings: CANARY_TASK_TIME_LIMIT_SECONDS={hard:g} gives a soft time "
            f"limit of {soft:g}s, which must be above the {STEP_BUDGET_SECONDS:g}s one advance "
            f"of a plan may take: set it above {STEP_BUDGET_SECONDS + SOFT_LIMIT_MARGIN_SECONDS:g}"
            " (and CANARY_LEASE_SECONDS above that)"
        )
    if settings.api_tokens is not None:
        from controller.api.auth import parse_tokens

        try:
            parse_tokens(settings.api_tokens.get_secret_value())
        except ValueError as exc:
            raise SettingsError(f"invalid settings: CANARY_API_TOKENS: {exc}") from None
    return settings
