"""YAML that cannot hurt the process reading it.

Plans arrive as files on an SRE's machine and as text in API calls. PyYAML's safe
loader refuses code, but not work: an alias bomb (a kilobyte of ``&a [*b, *b, …]``)
expands to gigabytes, a few hundred nested brackets overflow the recursion limit, an
integer of 5,000 digits raises ``ValueError`` from deep inside the constructor, and a
repeated key silently keeps the last value. This loader refuses each of them with the
line, before anything is built:

- aliases (``*name``) are refused: a plan writes its values out;
- nesting deeper than ``MAX_DEPTH`` and more than ``MAX_NODES`` nodes are refused;
- integers longer than ``MAX_INT_DIGITS`` digits are refused;
- a key repeated in one mapping is refused, naming the line of the first;
- text holding a NUL, even written as the escape ``"\\0"``, is refused: the store
  cannot hold it.

PyYAML reads YAML 1.1, which silently gives other values than a person (or YAML
1.2) reads: ``010`` is 8, ``1:30`` is 90, ``5_0`` is 50, ``0b11`` is 3, ``yes`` and
``on`` are true, ``2024-01-01`` is a date and ``!!binary`` gives bytes that
pydantic turns into a name. Each is refused, saying how it was read: a plan writes
integers in plain decimal, ``true``/``false``, and text that looks like a number
or a date in quotes.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

MAX_DEPTH = 40
MAX_NODES = 50_000
MAX_INT_DIGITS = 30


class YamlInputError(Exception):
    """YAML refused, with the 1-based line where the problem is (when known)."""

    def __init__(self, message: str, line: int | None = None):
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader with the limits of this module."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlInputError(
                f"YAML aliases (*{event.anchor}) are not allowed in a plan: write the value out",
                event.start_mark.line + 1,
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise YamlInputError(
                f"more than {MAX_NODES} YAML nodes", self.peek_event().start_mark.line + 1
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlInputError(
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark.line + 1,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self.flatten_mapping(node)
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first_line.get(key)
                except TypeError:
                    raise ConstructorError(
                        None, None, "a mapping key must be a plain value", key_node.start_mark
                    ) from None
                line = key_node.start_mark.line + 1
                if seen is not None:
                    raise YamlInputError(f"duplicate key {key!r} (first on line {seen})", line)
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_scalar(self, node: Node) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and "\x00" in value:
            raise YamlInputError(
                "contains a NUL character (\\0), which no text may hold", node.start_mark.line + 1
            )
        return value

    def construct_yaml_int(self, node: Node) -> int:
        digits = sum(ch.isdigit() for ch in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise YamlInputError(
                f"integer of {digits} digits: at most {MAX_INT_DIGITS}", node.start_mark.line + 1
            )
        value = super().construct_yaml_int(node)
        _refuse_yaml11_number(node, value)
        return value

    def construct_yaml_float(self, node: Node) -> float:
        value = super().construct_yaml_float(node)
        _refuse_yaml11_number(node, value)
        return value

    def construct_yaml_bool(self, node: Node) -> bool:
        value = super().construct_yaml_bool(node)
        written = str(node.value)
        if written.lower() not in ("true", "false"):
            raise YamlInputError(
                f"{written} is read by YAML 1.1 as {str(value).lower()}: write "
                f"{str(value).lower()}, or quote '{written}' if it is text",
                node.start_mark.line + 1,
            )
        return value

    def construct_yaml_timestamp(self, node: Node) -> Any:
        raise YamlInputError(
            f"{node.value} is read by YAML as a date: quote it ('{node.value}') if it is text",
            node.start_mark.line + 1,
        )

    def construct_unused_tag(self, node: Node) -> Any:
        kind = node.tag.rsplit(":", 1)[-1]
        read_as = {"binary": "bytes", "set": "a set", "omap": "pairs", "pairs": "pairs"}[kind]
        raise YamlInputError(
            f"!!{kind} is read by YAML as {read_as}, which no plan field takes: write the "
            "text, list or mapping itself",
            node.start_mark.line + 1,
        )


def _refuse_yaml11_number(node: Node, value: float) -> None:
    """Refuse a number YAML 1.1 reads otherwise than its digits say in decimal."""
    written = str(node.value).strip()
    body = written.lstrip("+-").lower()
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    meant = shown
    if "_" in body:
        why = "underscores are dropped"
    elif ":" in body:
        why = "base 60"
    elif body.startswith("0b"):
        why = "binary"
    elif body.startswith("0x"):
        why = "hexadecimal"
    elif len(body) > 1 and body[0] == "0" and body.isdigit():
        why = "octal, for the leading 0"
        decimal = f"{'-' if written.startswith('-') else ''}{int(body)}"
        meant = shown if decimal == shown else f"{decimal} or {shown}"
    else:
        return
    raise YamlInputError(
        f"{written} is read by YAML 1.1 as {shown} ({why}): write it in plain decimal "
        f"({meant}), or quote '{written}' if it is text",
        node.start_mark.line + 1,
    )


_GuardedLoader.add_constructor("tag:yaml.org,2002:int", _GuardedLoader.construct_yaml_int)
_GuardedLoader.add_constructor("tag:yaml.org,2002:float", _GuardedLoader.construct_yaml_float)
_GuardedLoader.add_constructor("tag:yaml.org,2002:bool", _GuardedLoader.construct_yaml_bool)
_GuardedLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", _GuardedLoader.construct_yaml_timestamp
)
for _kind in ("binary", "set", "omap", "pairs"):
    _GuardedLoader.add_constructor(
        f"tag:yaml.org,2002:{_kind}", _GuardedLoader.construct_unused_tag
    )


def load_yaml(text: str) -> tuple[Any, Node | None]:
    """The data of one YAML document and its node tree (for line numbers); raises
    YamlInputError, never another exception, on anything it refuses or cannot parse."""
    loader = None
    try:
        loader = _GuardedLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        return data, node
    except YamlInputError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlInputError(
            f"not valid YAML: {problem}", mark.line + 1 if mark is not None else None
        ) from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
        raise YamlInputError(f"not valid YAML: {type(exc).__name__}: {exc}"[:300]) from None
    finally:
        if loader is not None:
            loader.dispose()
