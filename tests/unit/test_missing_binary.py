"""A missing server binary is a message with the install command, never a traceback."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

import controller.demo.runner
from controller.cli import app
from controller.lab.binaries import require_binary
from controller.lab.errors import MissingBinaryError


@pytest.mark.parametrize(
    "name", ["prometheus", "haproxy", "redis-server", "prometheus-alertmanager"]
)
def test_require_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(MissingBinaryError, match=f"apt-get install -y {name}"):
        require_binary(name)


def test_demo_turns_a_missing_binary_into_exit_4_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_haproxy(**_kwargs: object) -> dict:
        raise MissingBinaryError(
            "'haproxy' is not installed or not on PATH; install it with: apt-get install -y haproxy"
        )

    monkeypatch.setattr(controller.demo.runner, "run_demo", no_haproxy)
    result = CliRunner().invoke(app, ["demo", "--json"])
    assert result.exit_code == 4
    assert "apt-get install -y haproxy" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
