"""Settings: a bad value stops the process with the variable's name and the problem,
never a traceback from deep inside a library later on."""

from __future__ import annotations

import pytest

from config.settings import SettingsError, get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch):
    for name in ("CANARY_DATABASE_URL", "CANARY_BROKER_URL", "CANARY_PROMETHEUS_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CANARY_DATABASE_URL", "nonsense", "not a database URL"),
        ("CANARY_DATABASE_URL", "mysql://root@localhost/x", "'mysql' is not supported"),
        ("CANARY_BROKER_URL", "http://127.0.0.1:6379", "must be a Redis URL"),
        ("CANARY_RESULT_BACKEND", "amqp://guest@localhost", "must be a Redis URL"),
        ("CANARY_PROMETHEUS_URL", "127.0.0.1:9090", "must be an http(s) URL"),
        ("CANARY_FLOWER_USER", "on:call", "must not contain ':' or ','"),
        ("CANARY_FLOWER_PASSWORD", "pa,ss", "Flower would split it"),
        ("CANARY_LEASE_SECONDS", "1", "CANARY_LEASE_SECONDS: Input should be greater than 5"),
    ],
)
def test_bad_settings_name_the_variable_and_the_problem(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        get_settings()
    assert f"{variable}: " in str(caught.value) and message in str(caught.value)
    if "PASSWORD" in variable:
        assert value not in str(caught.value)


def test_good_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANARY_DATABASE_URL", "postgresql+psycopg://canary@db:5432/canary")
    monkeypatch.setenv("CANARY_BROKER_URL", "rediss://:secret@redis:6380/1")
    monkeypatch.setenv("CANARY_FLOWER_PASSWORD", "s3cr3t:with-colon")
    settings = get_settings()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.flower_password.get_secret_value() == "s3cr3t:with-colon"


def test_the_demo_borrows_the_redis_database_of_the_broker_url() -> None:
    from controller.demo.runner import redis_db_of

    assert redis_db_of("redis://127.0.0.1:6379/3") == 3
    assert redis_db_of("redis://127.0.0.1:6379") == 0
    assert redis_db_of("redis://:secret@redis:6379/12") == 12


@pytest.mark.parametrize(
    ("broker", "share", "shared_through"),
    [
        ("redis://127.0.0.1:6379/0", "true", "redis://127.0.0.1:6379/0"),
        ("rediss://cache.internal:6380/2", "true", "rediss://cache.internal:6380/2"),
        (
            "rediss://cache.internal:6380/2?ssl_cert_reqs=CERT_REQUIRED",
            "true",
            "rediss://cache.internal:6380/2",
        ),
        ("redis://127.0.0.1:6379/0", "false", None),
        ("sentinel://127.0.0.1:26379", "true", None),  # a URL redis-py cannot open
    ],
)
def test_batched_answers_are_shared_through_the_brokers_redis_when_it_can_be(
    monkeypatch: pytest.MonkeyPatch, broker: str, share: str, shared_through: str | None
) -> None:
    from controller.runtime import shared_answers

    monkeypatch.setenv("CANARY_BROKER_URL", broker)
    monkeypatch.setenv("CANARY_SHARE_QUERY_ANSWERS", share)
    settings = get_settings()
    answers = shared_answers(settings)
    assert answers is not None
    if shared_through is None:
        assert answers.fleet is None
    else:
        assert answers.fleet is not None
        kwargs = answers.fleet.client.connection_pool.connection_kwargs
        assert shared_through.split("//")[1].split("/")[0] == f"{kwargs['host']}:{kwargs['port']}"
        # A batched query may take a slot (5 s, above the 2 s of one rollout's query),
        # twice: the others wait that long, no more.
        assert answers.fleet.claim_seconds == pytest.approx(2 * 5.0 + 0.2 + 1.0)


def test_no_batching_means_no_shared_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.runtime import shared_answers

    monkeypatch.setenv("CANARY_QUERY_BATCH_SLOT_SECONDS", "0")
    settings = get_settings()
    assert shared_answers(settings) is None


def test_a_tls_broker_url_in_celerys_form_is_read_as_redis_py_needs_it() -> None:
    from controller.analysis.answer_cache import RedisAnswerCache, redis_py_url

    celery_form = "rediss://:secret@cache.internal:6380/2?ssl_cert_reqs=CERT_REQUIRED"
    assert redis_py_url(celery_form) == (
        "rediss://:secret@cache.internal:6380/2?ssl_cert_reqs=required"
    )
    cache = RedisAnswerCache.from_url(celery_form, "ns", 1.0)
    assert cache.client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "required"
    assert redis_py_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
