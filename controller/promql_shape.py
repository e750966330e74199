"""The shape of a PromQL text, measured before the PromQL parser may see it.

The parser (``promql-parser``, Rust behind pyo3) recurses natively and its cost
grows with the square of the depth of the expression it builds. A query nested a
thousand brackets deep overflows a thread's stack and ends the whole process (API
server, worker or CLI) with SIGSEGV; 3,990 ``-`` signs and an ``x`` (a query of
3,991 characters) take 1.1 GB, and 1,990 chained ``-x`` take 600 MB. The length
limit bounds neither, so every query is measured here first and refused past
limits no real query comes near:

- ``MAX_SIGNS_IN_A_ROW`` signs (``+``, ``-``) in a row: ``x - -1`` is the most
  anyone means;
- ``MAX_OPERATORS`` operators (arithmetic, comparison, ``and``/``or``/``unless``,
  ``atan2``, unary signs) in one query: each can add a level to the tree;
- ``MAX_NESTING`` levels of brackets;
- ``MAX_BRACKETS`` opening brackets in the whole text, strings and comments
  included: whatever the lexer below gets wrong, the parser never nests deeper
  than that (800 levels still parse on a 1 MB thread stack).

What counts is what the PromQL lexer takes as code: text in quotes (``"``, ``'``
with backslash escapes, raw backticks) and a ``#`` comment up to the end of its
line are not. A quote inside a comment does not start a string, and a ``#`` inside
a string does not start a comment, so neither can hide brackets from the count.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CHARS = 4000
MAX_NESTING = 100
MAX_OPERATORS = 100
MAX_SIGNS_IN_A_ROW = 2
MAX_BRACKETS = 400

_OPENERS, _CLOSERS, _QUOTES, _SIGNS = "([{", ")]}", "\"'`", "+-"
_LINE_ENDS = "\r\n"  # the PromQL lexer ends a comment at either
_SYMBOL_OPERATORS = ("==", "!=", ">=", "<=", "*", "/", "%", "^", ">", "<")
_WORD_OPERATORS = frozenset({"and", "or", "unless", "atan2"})


@dataclass(frozen=True)
class PromqlShape:
    """What makes a query costly to parse, counted outside strings and comments
    (``brackets`` counts everywhere)."""

    nesting: int
    operators: int
    signs_in_a_row: int
    brackets: int


def measure(text: str) -> PromqlShape:
    """The shape of ``text``: one pass with the PromQL lexer's rules for strings,
    comments, numbers and words; linear in the length."""
    scan = _Scan()
    i = 0
    while i < len(text):
        i = scan.step(text, i)
    brackets = sum(text.count(opener) for opener in _OPENERS)
    return PromqlShape(scan.deepest, scan.operators, scan.longest_run, brackets)


def shape_problem(text: str) -> str | None:
    """Why ``text`` must not reach the parser, in words; None when it may."""
    if len(text) > MAX_CHARS:
        return f"{len(text)} characters long; at most {MAX_CHARS} are accepted"
    shape = measure(text)
    if shape.signs_in_a_row > MAX_SIGNS_IN_A_ROW:
        return (
            f"{shape.signs_in_a_row} signs (+ or -) in a row; at most "
            f"{MAX_SIGNS_IN_A_ROW} are accepted"
        )
    if shape.nesting > MAX_NESTING:
        return f"nested {shape.nesting} deep; at most {MAX_NESTING} levels are accepted"
    if shape.operators > MAX_OPERATORS:
        return (
            f"{shape.operators} operators; at most {MAX_OPERATORS} are accepted "
            "(split it into recording rules)"
        )
    if shape.brackets > MAX_BRACKETS:
        return (
            f"{shape.brackets} opening brackets, counting those in strings and comments; "
            f"at most {MAX_BRACKETS} are accepted"
        )
    return None


def nesting(text: str) -> int:
    """The deepest nesting of brackets in ``text``, outside strings and comments."""
    return measure(text).nesting


class _Scan:
    """The counters of one pass over a query."""

    def __init__(self) -> None:
        self.open: list[str] = []  # the brackets open at this point, innermost last
        self.deepest = 0
        self.operators = 0
        self.run = 0  # signs since the last operand or bracket
        self.longest_run = 0

    def step(self, text: str, i: int) -> int:
        """Take the token at ``i``; return where the next one starts."""
        char = text[i]
        if char == "#":
            return _comment_end(text, i)  # whitespace to the lexer: a run goes on
        if char.isspace():
            return i + 1
        if char in _SIGNS:
            self.run += 1
            self.longest_run = max(self.longest_run, self.run)
            self._operator()
            return i + 1
        self.run = 0
        if char in _QUOTES:
            return _string_end(text, i)
        if char in _OPENERS:
            self.open.append(char)
            self.deepest = max(self.deepest, len(self.open))
            return i + 1
        if char in _CLOSERS:
            if self.open:
                self.open.pop()
            return i + 1
        if char.isdigit() or (char == "." and text[i + 1 : i + 2].isdigit()):
            return _number_end(text, i)
        if char.isalpha() or char in "_:":
            end = _word_end(text, i)
            if text[i:end].lower() in _WORD_OPERATORS:
                self._operator()
            return end
        symbol = next((s for s in _SYMBOL_OPERATORS if text.startswith(s, i)), None)
        if symbol is not None:
            self._operator()
            return i + len(symbol)
        return i + 1

    def _operator(self) -> None:
        # Inside a label matcher list ({a="b", c!~"d"}) nothing is an operator of the
        # expression tree.
        if not self.open or self.open[-1] != "{":
            self.operators += 1


def _comment_end(text: str, start: int) -> int:
    ends = [found for end in _LINE_ENDS if (found := text.find(end, start)) >= 0]
    return min(ends) + 1 if ends else len(text)


def _string_end(text: str, start: int) -> int:
    """Just past the quote closing the string opened at ``start`` (the end of the
    text when it is never closed): backslash escapes in "" and '', none in ``."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and quote != "`":
            i += 2
        elif char == quote:
            return i + 1
        else:
            i += 1
    return len(text)


def _number_end(text: str, start: int) -> int:
    """Just past a number or duration (``1.5e-3``, ``0x1F``, ``1h30m``): the sign of
    a decimal exponent belongs to the number, not to the expression."""
    decimal = not text.startswith(("0x", "0X"), start)
    i = start
    while i < len(text) and (
        text[i].isalnum() or text[i] in "._" or (decimal and _exponent_sign(text, start, i))
    ):
        i += 1
    return i


def _exponent_sign(text: str, start: int, i: int) -> bool:
    """Whether the sign at ``i`` is a decimal exponent's (``1.5e-3``), not an operator."""
    return (
        text[i] in _SIGNS
        and text[i - 1] in "eE"
        and text[i + 1 : i + 2].isdigit()
        and text[start : i - 1].replace(".", "").replace("_", "").isdigit()
    )


def _word_end(text: str, start: int) -> int:
    i = start
    while i < len(text) and (text[i].isalnum() or text[i] in "_:"):
        i += 1
    return i
