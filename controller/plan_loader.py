"""Load a plan file and explain every problem in it with its field path and line.

Pydantic says *what* is wrong and *where* in the data; the YAML node tree says on
which line that place is. Checks that span fields (weights rise and end at 100,
stages in a sensible order, criteria naming real stages) run after the per-field
validation so that one pass reports everything; so do the time budget of one
advance (``controller.budget``) and the parse of every PromQL query and alert
matcher (``controller.plan_checks``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import yaml
from pydantic import ValidationError

from controller.budget import budget_problems
from controller.durations import format_duration
from controller.plan import (
    PREFLIGHT_GATE,
    TEMPLATE_VARIABLES,
    CanaryStage,
    Criterion,
    Plan,
    RampStage,
    RisingTrend,
    SoakStage,
    VerifyStage,
    malformed_templates,
    template_typo_message,
    template_variables,
)
from controller.plan_checks import format_path as _format_path
from controller.plan_checks import plan_problems
from controller.safe_yaml import YamlInputError, load_yaml

MAX_PLAN_BYTES = 1_000_000
MAX_PROBLEMS_SHOWN = 100


@dataclass(frozen=True)
class PlanProblem:
    """One thing wrong with a plan, pointing at the field and the line."""

    path: str
    message: str
    line: int | None = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path or '(plan)'}: {self.message}"


class PlanError(Exception):
    """A plan that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: Sequence[PlanProblem]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(p.render(source) for p in self.problems))


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; raise PlanError listing every problem."""
    path = Path(path)
    return parse_plan(read_plan_text(path), source=str(path))


def read_plan_text(path: Path) -> str:
    """The text of a plan file (see ``read_plan_file``), which must be UTF-8."""
    try:
        return read_plan_file(path).decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(str(path), [PlanProblem("", "plan file is not UTF-8 text")]) from None


def read_plan_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_PLAN_BYTES. Opened without
    blocking and checked before reading: a FIFO would hang the reader, and
    ``/dev/zero`` or a directory would never be a plan."""

    def refuse(message: str) -> PlanError:
        return PlanError(str(path), [PlanProblem("", message)])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise refuse(f"cannot read plan file: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(f"not a regular file ({_file_kind(info.st_mode)}): give a plan file")
        if info.st_size > MAX_PLAN_BYTES:
            raise refuse(f"plan file is larger than {MAX_PLAN_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read plan file: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_PLAN_BYTES:  # it grew while being read
        raise refuse(f"plan file is larger than {MAX_PLAN_BYTES} bytes")
    return raw


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    """Validate plan YAML text; raise PlanError listing every problem."""
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError(source, [PlanProblem("", f"plan is larger than {MAX_PLAN_BYTES} bytes")])
    try:
        data, node = load_yaml(text)
    except YamlInputError as exc:
        raise PlanError(source, [PlanProblem("", exc.message, exc.line)]) from None
    if not isinstance(data, dict):
        raise PlanError(
            source, [PlanProblem("", "a plan must be a YAML mapping (name, stages, ...)", 1)]
        )
    lines = _LineIndex(node)
    try:
        plan = Plan.from_data(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = []
        for error in errors[:MAX_PROBLEMS_SHOWN]:
            path, line = lines.locate(error["loc"])
            problems.append(PlanProblem(path, _clean_message(error), line))
        raise PlanError(source, _with_count_of_the_rest(problems, len(errors))) from None
    # PromQL and matchers are checked once the fields are sound (controller.plan_checks).
    found = semantic_problems(plan) + plan_problems(plan)
    problems = [
        PlanProblem(_format_path(loc), message, lines.locate(loc)[1])
        for loc, message in found[:MAX_PROBLEMS_SHOWN]
    ]
    if problems:
        raise PlanError(source, _with_count_of_the_rest(problems, len(found)))
    return plan


def _with_count_of_the_rest(shown: list[PlanProblem], total: int) -> list[PlanProblem]:
    """The problems shown, and a last one saying how many more there are: a plan with
    24,000 unknown keys is answered with the first ``MAX_PROBLEMS_SHOWN``, not with
    a report as large as the plan."""
    if total <= len(shown):
        return shown
    more = total - len(shown)
    return [*shown, PlanProblem("", f"and {more} more problems; fix these first")]


def semantic_problems(plan: Plan) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-field rules: the shape of a plan that makes sense to run."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    names = [stage.name for stage in plan.stages]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append((("stages", i, "name"), f"duplicate stage name {name!r}"))
        if name == PREFLIGHT_GATE:
            problems.append(
                (
                    ("stages", i, "name"),
                    f"{name!r} is reserved: it names the go/no-go approval gate "
                    "(gates.approvals), whose approvals would count for this stage; "
                    "name the stage something else",
                )
            )
    criteria = [c.name for c in plan.stop_criteria]
    for i, name in enumerate(criteria):
        if name in criteria[:i]:
            problems.append((("stop_criteria", i, "name"), f"duplicate criterion name {name!r}"))
    for i, criterion in enumerate(plan.stop_criteria):
        for stage_name in criterion.stages or []:
            if stage_name not in names:
                problems.append((("stop_criteria", i, "stages"), f"no stage named {stage_name!r}"))

    for i, criterion in enumerate(plan.stop_criteria):
        if isinstance(criterion, RisingTrend):
            window = criterion.window or plan.analysis.window
            points = int(window / criterion.step) + 1
            if points < criterion.min_points:
                problems.append(
                    (
                        ("stop_criteria", i, "min_points"),
                        f"a window of {format_duration(window)} sampled every "
                        f"{format_duration(criterion.step)} has only {points} points, fewer "
                        f"than min_points {criterion.min_points}: it could never be judged",
                    )
                )

    for name, default in plan.variables.items():
        unknown = [v for v in template_variables(default) if v not in TEMPLATE_VARIABLES]
        if unknown:
            problems.append(
                (
                    ("variables", name),
                    f"a variable's default may only use built-in variables "
                    f"({', '.join(TEMPLATE_VARIABLES)}), not {', '.join(unknown)}",
                )
            )
        if name in TEMPLATE_VARIABLES:
            problems.append((("variables", name), f"{name!r} is a built-in variable"))
        malformed = malformed_templates(default)
        if malformed:
            problems.append(
                (("variables", name), template_typo_message(malformed, TEMPLATE_VARIABLES))
            )

    for i, gate in enumerate(plan.gates.approvals):
        if not plan.owners.get(gate.role):
            problems.append(
                (("gates", "approvals", i, "role"), f"no owners named for role {gate.role!r}")
            )
    for i, stage in enumerate(plan.stages):
        for role in stage.approval:
            if not plan.owners.get(role):
                problems.append((("stages", i, "approval"), f"no owners named for role {role!r}"))

    for i, stage in enumerate(plan.stages):
        if not isinstance(stage, SoakStage) and not plan.criteria_for(stage.name):
            problems.append(
                (
                    (("stages", i)),
                    "no stop criterion applies to this stage: it would promote on time alone",
                )
            )

    previous = 0
    traffic_seen = False
    verify_seen = False
    for i, stage in enumerate(plan.stages):
        if verify_seen:
            problems.append((("stages", i), "the verify stage must be the last stage"))
        if isinstance(stage, SoakStage) and traffic_seen:
            problems.append((("stages", i), "a soak stage must come before any traffic moves"))
        if isinstance(stage, CanaryStage) and traffic_seen:
            problems.append(
                (("stages", i), "only one canary stage, and it must come before the ramp")
            )
        weighted: list[tuple[tuple[str | int, ...], int]] = []
        if isinstance(stage, CanaryStage):
            weighted.append((("stages", i, "weight"), stage.weight))
        elif isinstance(stage, RampStage):
            weighted += [
                (("stages", i, "steps", j, "weight"), s.weight) for j, s in enumerate(stage.steps)
            ]
        for loc, weight in weighted:
            if weight <= previous:
                problems.append((loc, f"weights must rise: {weight} follows {previous}"))
            previous = max(previous, weight)
            traffic_seen = True
        if isinstance(stage, VerifyStage):
            verify_seen = True
            if previous != 100:
                problems.append(
                    (("stages", i), "verify needs all traffic on the new version first")
                )
    if not traffic_seen:
        problems.append((("stages",), "a plan needs a canary or ramp stage that moves traffic"))
    elif previous != 100:
        problems.append((("stages",), f"weights must end at 100, the last one is {previous}"))
    # A step whose checks cannot finish within one task would be retried forever.
    problems += budget_problems(plan)
    return problems


def _clean_message(error: dict) -> str:
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "union_tag_invalid":
        return message.replace("Input tag", "value")
    return message


class _LineIndex:
    """Maps a validation error's location in the data to a line of the YAML text.

    Each mapping's keys are indexed the first time a location goes through it, so
    locating every problem of a plan is linear in its size (24,000 unknown keys,
    looked up by scanning the mapping each time, took 11 s)."""

    def __init__(self, root: yaml.Node | None):
        self.root = root
        self._keys: dict[int, dict[object, yaml.Node]] = {}  # id of a mapping node -> its keys

    def locate(self, loc: Sequence[str | int]) -> tuple[str, int | None]:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        kept: list[str | int] = []
        for part in loc:
            child = self._child(node, part)
            if child is None:
                # Discriminated unions add the tag to the location; it is not in the data.
                if isinstance(part, str) and part in _UNION_TAGS:
                    continue
                kept.append(part)
                continue
            node = child
            kept.append(part)
            line = node.start_mark.line + 1
        return _format_path(kept), line

    def _child(self, node: yaml.Node | None, part: str | int) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            return self._mapping_keys(node).get(part)
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            return node.value[part]
        return None

    def _mapping_keys(self, node: yaml.MappingNode) -> dict[object, yaml.Node]:
        keys = self._keys.get(id(node))
        if keys is None:
            keys = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    keys.setdefault(key.value, value)  # repeated keys were refused already
            self._keys[id(node)] = keys
        return keys


def _union_tags() -> frozenset[str]:
    """The tags pydantic puts in a discriminated union's error path (the judge of a
    criterion, the kind of a stage): not a field of the plan, so left out of the path
    shown. Read from the models so a new judge or stage kind is covered by itself."""
    models = (*get_args(Criterion), SoakStage, CanaryStage, RampStage, VerifyStage)
    tags: set[str] = set()
    for model in models:
        for name in ("judge", "kind"):
            field = model.model_fields.get(name)
            if field is not None:
                tags.update(get_args(field.annotation))
    return frozenset(tags)


_UNION_TAGS = _union_tags()
