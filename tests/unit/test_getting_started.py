"""docs/getting-started.md, read as a new user follows it, word by word: its shell
steps run in order on a fresh host (directories exist before files go in them, the
locked dependencies are what gets installed), its settings are settings the
controller knows and include what the units it enables refuse to start without, its
`canary` commands are commands the CLI accepts, its HAProxy line passes HAProxy's
check, and its approvals can be given by the people its tokens name."""

from __future__ import annotations

import grp
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from config.settings import Settings
from controller.api.auth import Role, parse_tokens
from tests.unit.test_compose import resolve

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "getting-started.md").read_text()
PLACEHOLDER = re.compile(r"<[^>]*>")


def blocks(language: str) -> list[str]:
    """The guide's fenced code blocks of one language ("" for a bare fence), in order."""
    found: list[str] = []
    current: list[str] | None = None
    fence_language = ""
    for line in GUIDE.splitlines():
        if line.startswith("```"):
            if current is None:
                current, fence_language = [], line[3:].strip()
            else:
                if fence_language == language:
                    found.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return found


def shell_lines() -> list[str]:
    """The guide's shell lines as typed, continuation lines joined, in order."""
    return [line for b in blocks("sh") for line in b.replace("\\\n", " ").splitlines()]


def shell_commands() -> list[list[str]]:
    """Every shell command of the guide, in order, as words: one per ``&&``, up to a
    redirection, comments dropped, placeholders (``<release-bot's token>``) one word."""
    found = []
    for line in shell_lines():
        words = shlex.split(PLACEHOLDER.sub("PLACEHOLDER", line), comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if command:
                    found.append(command)
                command = []
            elif command and command[-1] == ">":
                command.pop()  # "> file": the shell's, not the command's
            elif not (found and command == [] and word == ">"):
                command.append(word)
    return [c for c in found if c]


def run(program: str) -> list[list[str]]:
    """The arguments of each command running ``program`` (after ``sudo`` and
    ``NAME=value`` assignments)."""
    found = []
    for words in shell_commands():
        rest = list(words)
        while rest and (rest[0] == "sudo" or re.fullmatch(r"[A-Z_]+=\S*", rest[0])):
            rest.pop(0)
        if rest and rest[0] == program:
            found.append(rest[1:])
    return found


def acting_as(action: str) -> str:
    """Whose token the guide uses for a ``canary ACTION`` line."""
    (line,) = [line for line in shell_lines() if f"canary {action}" in line]
    found = re.search(r"CANARY_TOKEN=<([\w-]+)'s token>", line)
    assert found, f"no token for canary {action}: {line}"
    return found.group(1)


def settings_example() -> dict[str, str]:
    """The ``NAME=value`` block the guide tells you to put in canary.env."""
    (block,) = [b for b in blocks("sh") if "CANARY_DATABASE_URL=" in b]
    pairs = (line.split("=", 1) for line in block.splitlines() if line.strip())
    return {name: value for name, value in pairs}


def token_roles() -> dict[str, Role]:
    """Name -> role of the example's API tokens (placeholders as long secrets)."""
    text = PLACEHOLDER.sub("x" * 32, settings_example()["CANARY_API_TOKENS"])
    return {token.principal.name: token.principal.role for token in parse_tokens(text)}


def test_every_file_is_installed_into_a_directory_made_before() -> None:
    """`install ... /etc/canary/canary.env` failed on a fresh host: no /etc/canary."""
    made: set[PurePosixPath] = {PurePosixPath("/etc"), PurePosixPath("/opt")}
    for args in run("install"):
        paths = [PurePosixPath(a) for a in args if a.startswith("/") and a != "/dev/null"]
        if "-d" in args:
            made |= set(paths)
            continue
        target = paths[-1]
        assert target.parent in made, f"install {' '.join(args)}: {target.parent} was never made"


def test_the_locked_dependencies_are_installed_before_the_project() -> None:
    """As scripts/setup and the Dockerfile do: the lock with its hashes, then the
    project without resolving anything again."""
    pips = [args[1:] for args in run(".venv/bin/pip") if args[0] == "install"]
    assert pips[0] == ["--require-hashes", "-r", "requirements.lock"], pips
    assert pips[1] == ["--no-deps", "."], pips
    assert len(pips) == 2, pips


def test_the_settings_example_names_known_settings_and_what_flower_needs() -> None:
    example = settings_example()
    known = {f"CANARY_{name.upper()}" for name in Settings.model_fields}
    assert set(example) <= known, set(example) - known
    # The guide enables canary-flower, which refuses to start without both.
    assert "canary-flower" in GUIDE
    assert {"CANARY_FLOWER_USER", "CANARY_FLOWER_PASSWORD"} <= set(example)
    assert token_roles()  # a valid name:role:token list


def test_every_canary_command_is_one_the_cli_accepts() -> None:
    commands = run("canary")
    assert len(commands) >= 8, commands
    for args in commands:
        node, rest = resolve(args)
        assert not hasattr(node, "commands"), f"canary {' '.join(args)} names no command"
        node.make_context("canary", list(rest), resilient_parsing=False)


def test_the_first_start_names_the_stable_version() -> None:
    """A service's first rollout has no stable release in the store to default to."""
    (start,) = [args for args in run("canary") if args[0] == "start"]
    assert "--stable" in start and "--wait" in start


def test_approvers_are_token_names_and_never_the_starter() -> None:
    """A plan's owners are the names API tokens carry (operators or admins: approving
    is an operator's action); the token that starts never approves; registering a
    plan is an admin's action."""
    (block,) = [b for b in blocks("yaml") if "owners:" in b]
    owners = yaml.safe_load(block.replace("# ...", ""))["owners"]
    roles = token_roles()
    starter = acting_as("start")
    assert roles[starter] in (Role.OPERATOR, Role.ADMIN)
    assert roles[acting_as("plan register")] == Role.ADMIN
    named = {person for people in owners.values() for person in people}
    for person in named:
        assert roles.get(person) in (Role.OPERATOR, Role.ADMIN), person
    assert starter not in named, f"{starter} starts and is named to approve"
    approvers = {
        re.search(r"<([\w-]+)'s token>", line).group(1)  # type: ignore[union-attr]
        for line in shell_lines()
        if "canary approve" in line
    }
    assert approvers == named


def test_the_haproxy_socket_line_gives_the_canary_group_the_socket(tmp_path: Path) -> None:
    """The controller's units run as user canary; HAProxy's check accepts the line
    (with this machine's group for canary)."""
    (line,) = [b.strip() for b in blocks("") if b.strip().startswith("stats socket")]
    assert "group canary" in line and "mode 660" in line and "level admin" in line
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is needed: apt-get install -y haproxy")
    socket = line.replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock"))
    socket = socket.replace("group canary", f"group {grp.getgrgid(os.getgid()).gr_name}")
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"global\n    {socket}\ndefaults\n    mode http\n    timeout connect 1s\n"
        "    timeout client 1s\n    timeout server 1s\n"
    )
    result = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_units_are_installed_with_their_drop_ins() -> None:
    """Each worker's metrics port is in a drop-in directory next to the units."""
    assert ["sudo", "cp", "-r", "config/systemd/.", "/etc/systemd/system/"] in shell_commands()
    assert ["sudo", "systemctl", "daemon-reload"] in shell_commands()
