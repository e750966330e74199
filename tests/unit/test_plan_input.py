"""Plan input that cannot hurt: every hostile or mistyped input is one PlanError
naming the line (and the field, when there is one), never a traceback, a hang or
gigabytes of memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import PLANS_DIR
from controller import plan_loader
from controller.plan import Plan
from controller.plan_loader import (
    MAX_PLAN_BYTES,
    MAX_PROBLEMS_SHOWN,
    PlanError,
    load_plan,
    parse_plan,
)
from controller.safe_yaml import MAX_DEPTH, MAX_NODES, YamlInputError, load_yaml

DEMO = (PLANS_DIR / "demo.yaml").read_text()


def refused(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(PlanError) as caught:
        parse_plan(text, source="p.yaml")
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def refused_file(path: Path) -> str:
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    [problem] = caught.value.problems
    return problem.message


def with_first_weight(value: str) -> str:
    """The demo plan with its canary weight written as ``value``."""
    assert "weight: 10" in DEMO
    return DEMO.replace("weight: 10", f"weight: {value}", 1)


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)
    )
    assert len(bomb) < 1500
    [(line, path, message)] = refused(bomb)
    assert line == 2 and path == ""
    assert message == "YAML aliases (*a) are not allowed in a plan: write the value out"


def test_deep_nesting_is_refused_with_its_line_not_a_recursion_error() -> None:
    [(line, _, message)] = refused("name: x\nstages: " + "[" * 900 + "]" * 900 + "\n")
    assert message == f"nested deeper than {MAX_DEPTH} levels" and line == 2


def test_too_many_nodes_are_refused() -> None:
    [(_, _, message)] = refused("x: [" + ", ".join(["1"] * (MAX_NODES + 5)) + "]\n")
    assert message == f"more than {MAX_NODES} YAML nodes"


def test_a_huge_integer_is_refused_not_parsed() -> None:
    [(line, _, message)] = refused(with_first_weight("9" * 5000))
    assert message == "integer of 5000 digits: at most 30"
    assert line == DEMO.splitlines().index("    weight: 10") + 1


def test_a_repeated_key_is_refused_naming_both_lines() -> None:
    [(line, _, message)] = refused("name: one\nversion: 1\nname: two\n")
    assert (line, message) == (3, "duplicate key 'name' (first on line 1)")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", "Input should be a valid integer"),
        ('"10"', "Input should be a valid integer"),
        ("10.0", "Input should be a valid integer"),
    ],
)
def test_a_weight_is_an_integer_not_a_bool_a_string_or_a_float(value: str, expected: str) -> None:
    problems = refused(with_first_weight(value))
    assert [(path, message) for _, path, message in problems] == [("stages[1].weight", expected)]


@pytest.mark.parametrize("value", [".inf", ".nan", "true"])
def test_a_factor_is_a_finite_number(value: str) -> None:
    text = DEMO.replace("factor: 2", f"factor: {value}", 1)
    assert text != DEMO
    problems = refused(text)
    assert [path for _, path, _ in problems] == ["stop_criteria[0].factor"], problems


def test_an_unbounded_count_is_refused() -> None:
    text = DEMO.replace("min_requests: 15", "min_requests: 99999999999999", 1)
    assert text != DEMO
    [(_, path, message)] = refused(text)
    assert path.endswith("min_requests") and "less than or equal to 1000000000" in message


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(refused_file(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert result == ["not a regular file (a FIFO): give a plan file"]


def test_a_device_and_a_directory_are_refused(tmp_path: Path) -> None:
    assert refused_file(Path("/dev/zero")) == (
        "not a regular file (a character device): give a plan file"
    )
    assert refused_file(tmp_path) == "not a regular file (a directory): give a plan file"


def test_a_file_too_large_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:  # sparse: the size is known without writing it
        handle.truncate(MAX_PLAN_BYTES * 50)
    assert refused_file(big) == f"plan file is larger than {MAX_PLAN_BYTES} bytes"


def test_a_missing_file_and_binary_content_are_clear(tmp_path: Path) -> None:
    assert (
        refused_file(tmp_path / "nope.yaml") == "cannot read plan file: No such file or directory"
    )
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00name: x")
    assert refused_file(binary) == "plan file is not UTF-8 text"


def test_the_shipped_plans_still_load() -> None:
    for path in sorted(PLANS_DIR.glob("*.yaml")):
        assert load_plan(path).name, path


def demo_with(old: str, new: str) -> str:
    """The demo plan with its first ``old`` replaced by ``new`` (which must be there)."""
    assert old in DEMO, old
    return DEMO.replace(old, new, 1)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --- PromQL the parser must never see (issue 29, items 2 and 7) -----------------------

# Each in the demo plan's first query: the refusal, and the word the message starts with.
HOSTILE_QUERIES = {
    # 3,990 signs and an operand: 1.1 GB in the parser, growing with the square.
    "signs": ("-" * 3990 + "x", "3990 signs (+ or -) in a row; at most 2 are accepted"),
    # As many binary operators: 600 MB.
    "chained": ("x" + "-x" * 1990, "1990 operators; at most 100 are accepted"),
    # The quote in the comment once opened a "string" that hid the brackets from the
    # count: 443 MB and SIGSEGV on a 1 MB thread stack.
    "quote-in-a-comment": (
        '# "\n' + "(" * 1990 + "1" + ")" * 1990,
        "nested 1990 deep; at most 100 levels are accepted",
    ),
    # And the other way round: a # in a string is no comment hiding the rest of the line.
    "hash-in-a-string": (
        'x{a="#"} + ' + "(" * 1990 + "1" + ")" * 1990,
        "nested 1990 deep; at most 100 levels are accepted",
    ),
    "hash-after-an-escaped-quote": (
        'x{a="\\"#"} + ' + "(" * 1990 + "1" + ")" * 1990,
        "nested 1990 deep; at most 100 levels are accepted",
    ),
}

# Runs ``canary plan validate --json`` on each file in one process, on a thread with
# a 1 MB stack (a crash there is a SIGSEGV of the whole process), and reports how far
# each pushed the process's peak resident memory above that of validating the
# shipped plan.
_VALIDATE_EACH = textwrap.dedent(
    """
    import json, resource, sys, threading
    from typer.testing import CliRunner
    from controller.cli import app

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def validate(path):
        result = CliRunner().invoke(app, ["plan", "validate", "--json", path])
        return result.exit_code, result.stderr

    def run(found):
        validate(sys.argv[1])
        base = peak()
        for name, path in json.loads(sys.argv[2]).items():
            code, stderr = validate(path)
            found[name] = {"exit": code, "stderr": stderr, "grown": peak() - base}

    found = {}
    threading.stack_size(1 << 20)
    worker = threading.Thread(target=run, args=(found,))
    worker.start()
    worker.join()
    print(json.dumps(found))
    """
)
QUERY_LINE = "    canary_errors: sum(increase(demo_http_requests_total"


def with_first_query(query: str) -> str:
    """The demo plan with its first stop criterion's canary_errors set to ``query``."""
    data = yaml.safe_load(DEMO)
    data["stop_criteria"][0]["canary_errors"] = query
    return yaml.safe_dump(data, sort_keys=False)


def test_hostile_promql_is_refused_by_plan_validate_in_bounded_memory(tmp_path: Path) -> None:
    """``canary plan validate`` refuses each query shape that once took the parser
    hundreds of megabytes or crashed it, naming the field and the shape, while the
    process's peak memory stays within 64 MB of validating the shipped plan, on a 1 MB
    thread stack. (Before the shape guard: 1.1 GB for the signs, 600 MB for the
    chain, and a SIGSEGV for the quote in a comment.)"""
    files = {}
    for name, (query, _) in HOSTILE_QUERIES.items():
        files[name] = str(tmp_path / f"{name}.yaml")
        Path(files[name]).write_text(with_first_query(query))
    done = subprocess.run(
        [sys.executable, "-c", _VALIDATE_EACH, str(PLANS_DIR / "demo.yaml"), json.dumps(files)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-1000:])
    found = json.loads(done.stdout)
    for name, (_, message) in HOSTILE_QUERIES.items():
        result = found[name]
        assert result["exit"] == 2, (name, result)
        problems = json.loads(result["stderr"])["error"]["problems"]
        assert [p["path"] for p in problems] == ["stop_criteria[0].canary_errors"], (name, problems)
        assert problems[0]["message"].startswith(f"not valid PromQL: {message}"), (name, problems)
        assert result["grown"] < 64 * 2**20, (name, result["grown"])


# --- plans that could never run as written (items 4, 8, 9) ---------------------------


def test_a_stage_named_preflight_is_refused() -> None:
    """``preflight`` names the go/no-go approval gate; a stage of that name made the
    gate's approvals count for the stage, and the gate could never be approved."""
    text = demo_with("  - name: staging-soak\n", "  - name: preflight\n")
    [(line, path, message)] = refused(text)
    assert (line, path) == (line_of(text, "- name: preflight"), "stages[0].name")
    assert message.startswith("'preflight' is reserved: it names the go/no-go approval gate")


TEMPLATE_TYPOS = [
    ("{{ canary-version }}", "(did you mean {{ canary_version }}?)"),
    ("{{ service.__class__ }}", "(did you mean {{ service }}?)"),
    ("{{canary_version}", ""),
    ("{{ }}", ""),
]


@pytest.mark.parametrize(("typo", "hint"), TEMPLATE_TYPOS)
def test_a_template_typo_is_refused_naming_it(typo: str, hint: str) -> None:
    """A ``{{`` that is not a known variable's template stayed in the query as text:
    the plan validated, started, and its query could never match."""
    text = demo_with(
        'version="{{ canary_version }}", environment="{{ environment }}", code=~',
        f'version="{typo}", environment="{{{{ environment }}}}", code=~',
    )
    [(line, path, message)] = refused(text)
    assert (line, path) == (line_of(text, QUERY_LINE), "stop_criteria[0].canary_errors")
    assert message.startswith(f"{typo!r} is not a template: write {{{{ name }}}} with a known")
    assert hint in message


def test_a_template_typo_in_a_variable_default_is_refused() -> None:
    text = demo_with("  scrape_job: lab\n", "  scrape_job: '{{ service-name }}'\n")
    [(line, path, message)] = refused(text)
    assert (line, path) == (line_of(text, "scrape_job: '{{"), "variables.scrape_job")
    assert message.startswith("'{{ service-name }}' is not a template")


def test_a_stored_plan_with_a_template_typo_still_loads() -> None:
    """A rollout that stored such a plan before the rule must still load it, or it
    could not even be rolled back."""
    data = load_plan(PLANS_DIR / "demo.yaml").model_dump(mode="json")
    data["stop_criteria"][0]["canary_errors"] = "sum(x{v='{{ canary-version }}'})"
    assert Plan.from_stored(data).stop_criteria[0].canary_errors.endswith("}}'})")
    with pytest.raises(ValueError, match="is not a template"):
        Plan.from_data(data)


@pytest.mark.parametrize(
    ("owner", "why"),
    [
        ('"   "', "it is empty or only whitespace"),
        ('"alice\\n"', "it starts or ends with whitespace"),
        ('"al\\u200bice"', "it holds the control or invisible character '\\u200b'"),
        ('"alice:admin"', "it holds ':', which CANARY_API_TOKENS uses to separate entries"),
    ],
)
def test_an_owner_no_token_can_name_is_refused(owner: str, why: str) -> None:
    """An approval is recorded as the approver's token name: an owner no token can be
    named is an approval nobody can give."""
    text = demo_with("  release_manager: [alice]\n", f"  release_manager: [{owner}]\n")
    [(line, path, message)] = refused(text)
    assert (line, path) == (line_of(text, "release_manager: ["), "owners.release_manager[0]")
    assert message.endswith(f"cannot be an approver's name: {why}"), message


# --- YAML 1.1 readings, escaped NULs (items 10 and 12) --------------------------------


@pytest.mark.parametrize(
    ("old", "new", "path", "message"),
    [
        (
            "    weight: 10\n",
            "    weight: 010\n",
            "",
            "010 is read by YAML 1.1 as 8 (octal, for the leading 0): write it in plain "
            "decimal (10 or 8), or quote '010' if it is text",
        ),
        (
            "    weight: 10\n",
            "    weight: 1:30\n",
            "",
            "1:30 is read by YAML 1.1 as 90 (base 60): write it in plain decimal (90), or "
            "quote '1:30' if it is text",
        ),
        (
            "    weight: 10\n",
            "    weight: 5_0\n",
            "",
            "5_0 is read by YAML 1.1 as 50 (underscores are dropped): write it in plain "
            "decimal (50), or quote '5_0' if it is text",
        ),
        (
            "    weight: 10\n",
            "    weight: 0b1010\n",
            "",
            "0b1010 is read by YAML 1.1 as 10 (binary): write it in plain decimal (10), or "
            "quote '0b1010' if it is text",
        ),
        (
            "  - name: staging-soak\n",
            "  - name: !!binary c3RhZ2luZy1zb2Fr\n",
            "",
            "!!binary is read by YAML as bytes, which no plan field takes: write the text, "
            "list or mapping itself",
        ),
        (
            "description: The standard plan compressed to seconds, for the local lab.\n",
            "description: no\n",
            "",
            "no is read by YAML 1.1 as false: write false, or quote 'no' if it is text",
        ),
        (
            "description: The standard plan compressed to seconds, for the local lab.\n",
            "description: 2026-12-07\n",
            "",
            "2026-12-07 is read by YAML as a date: quote it ('2026-12-07') if it is text",
        ),
        (
            "    hold: 8s\n",
            "    hold: \u0661\u0660s\n",
            "stages[1].hold",
            "'\u0661\u0660s' has digits other than 0-9 ('\u0661\u0660' reads as 10): write "
            "'10s' with the digits 0-9",
        ),
        (
            "description: The standard plan compressed to seconds, for the local lab.\n",
            'description: "lab\\0"\n',
            "",
            "contains a NUL character (\\0), which no text may hold",
        ),
    ],
    ids=["octal", "base-60", "underscores", "binary", "!!binary", "no", "date", "digits", "nul"],
)
def test_a_value_yaml_reads_otherwise_is_refused_saying_how(
    old: str, new: str, path: str, message: str
) -> None:
    """YAML 1.1 reads these as something else than a person does (``weight: 010`` was
    8 %, ``1:30`` 90, ``\u0661\u0660s`` ten seconds), and the store cannot hold a NUL
    however it is written: each is refused on its line, saying how it was read."""
    text = demo_with(old, new)
    assert refused(text) == [(line_of(text, new.strip()[:12]), path, message)]


def test_yaml_11_spellings_in_quotes_are_text() -> None:
    """Quoted, each of those is the text it says: the rule refuses readings, not text."""
    data, _ = load_yaml("a: '010'\nb: '1:30'\nc: 'yes'\nd: '2026-12-07'\ne: !!str 5_0\n")
    assert data == {"a": "010", "b": "1:30", "c": "yes", "d": "2026-12-07", "e": "5_0"}
    with pytest.raises(YamlInputError, match="-010 is read by YAML 1.1 as -8"):
        load_yaml("a: -010\n")


# --- Many problems at once (item 11) --------------------------------------------------


def with_unknown_keys(count: int) -> str:
    """The demo plan and ``count`` unknown top-level keys, one a line."""
    return DEMO + "".join(f"x_{i:05d}: 1\n" for i in range(count))


def test_many_unknown_keys_are_reported_with_their_lines_and_a_count_of_the_rest() -> None:
    """Each problem shown names its key and line; past ``MAX_PROBLEMS_SHOWN`` the last
    says how many more there are, so a plan of 24,000 unknown keys is not answered
    with a report the size of the plan."""
    count = 2000
    problems = refused(with_unknown_keys(count))
    first = DEMO.count("\n") + 1
    assert problems[:-1] == [
        (first + i, f"x_{i:05d}", "unknown field") for i in range(MAX_PROBLEMS_SHOWN)
    ]
    more = count - MAX_PROBLEMS_SHOWN
    assert problems[-1] == (None, "", f"and {more} more problems; fix these first")


class _Entries(list):  # type: ignore[type-arg]
    """A mapping node's entries that count how many times an entry is read."""

    reads = 0

    def __iter__(self) -> Iterator[Any]:
        for entry in super().__iter__():
            _Entries.reads += 1
            yield entry

    def __getitem__(self, index: Any) -> Any:
        _Entries.reads += 1
        return super().__getitem__(index)


def _count_entry_reads(node: yaml.Node) -> int:
    """Make every mapping under ``node`` count its reads; returns how many entries
    there are in all."""
    total = 0
    if isinstance(node, yaml.MappingNode):
        total += len(node.value)
        for key, value in node.value:
            total += _count_entry_reads(key) + _count_entry_reads(value)
        node.value = _Entries(node.value)
    elif isinstance(node, yaml.SequenceNode):
        total += sum(_count_entry_reads(child) for child in node.value)
    return total


def test_locating_problems_reads_each_mapping_entry_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding the line of each problem is linear in the plan: every entry of every
    mapping is read a bounded number of times, however many problems there are.
    Scanning a mapping for each problem's key read 2,000 unknown keys about two
    million times (24,000 keys took 11 s; ``bench/plan_errors.py`` prints it)."""
    entries: list[int] = []

    def counted(text: str) -> tuple[Any, yaml.Node | None]:
        data, node = load_yaml(text)
        entries.append(_count_entry_reads(node))
        return data, node

    monkeypatch.setattr(plan_loader, "load_yaml", counted)
    _Entries.reads = 0
    refused(with_unknown_keys(2000))
    assert 0 < _Entries.reads <= 2 * entries[0], (_Entries.reads, entries[0])
