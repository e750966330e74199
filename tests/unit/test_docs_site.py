"""The documentation as a reader meets it: the README is a first page whose two
commands are the ones CI runs and whose links lead somewhere, the docs/ site
builds with `mkdocs build --strict` (every page in the nav, every link and anchor
found), and the plan field reference says what the plan models accept today."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor of a Markdown heading, as mkdocs and GitHub write it."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"\s+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    assert "WARNING" not in output, output
    # SECURITY.md stays at the top of the repository and is the site's security page.
    security = (tmp_path / "security" / "index.html").read_text()
    first_heading = re.search(r"^# (.+)$", (ROOT / "SECURITY.md").read_text(), re.MULTILINE)
    assert first_heading and first_heading.group(1) in security


def test_the_readme_is_a_first_page() -> None:
    lines = README.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move detail to docs/"
    assert "## Two commands for a fresh machine" in lines
    assert "bash scripts/demo" in lines and "bash scripts/test" in lines
    # The test command is what CI runs.
    assert "exec bash scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_every_link_of_the_readme_leads_somewhere() -> None:
    broken = []
    for target in LINK.findall(README):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / (path or "README.md")
        if not page.exists():
            broken.append(f"{target}: no such file")
        elif anchor and page.suffix == ".md" and anchor not in anchors(page):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken
    assert "docs/getting-started.md" in README.split("## Where to go next")[-1]


def test_the_settings_pages_name_every_setting_and_only_settings() -> None:
    from config.settings import Settings

    settings = {f"CANARY_{name.upper()}" for name in Settings.model_fields}
    operations = ROOT / "docs" / "operations"
    table = set(re.findall(r"CANARY_[A-Z_]+", (operations / "configuration.md").read_text()))
    per_process = set(re.findall(r"CANARY_[A-Z_]+", (operations / "index.md").read_text()))
    assert table == settings, (sorted(settings - table), sorted(table - settings))
    assert settings <= per_process, sorted(settings - per_process)


def test_the_plan_field_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "plan_reference", ROOT / "scripts" / "plan_reference.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PAGE.read_text() == module.render(module.current_schema()), (
        "docs/plans/fields.md is out of date: run .venv/bin/python scripts/plan_reference.py"
    )


def test_a_fresh_machine_gets_the_site_builder() -> None:
    """scripts/setup installs the test extra, so the build above runs on CI too."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ]", r)[0].lower() for r in extra["optional-dependencies"]["test"]}
    assert {"mkdocs", "mkdocs-material"} <= names
    assert "'.[test]'" in (ROOT / "scripts" / "setup").read_text()
