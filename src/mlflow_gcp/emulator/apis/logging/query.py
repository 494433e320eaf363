"""A real subset of the Logging query language, parsed once and evaluated against any JSON object.

Cloud Logging (``entries.list``) and Cloud Build (``builds.list``) filter with the same grammar
(https://cloud.google.com/logging/docs/view/logging-query-language; Cloud Build's list filter is the same
comparison syntax over build fields), so both use this module; each caller says how a field path reads
its objects and which fields it knows.

Supported, as the query language defines it:

- comparisons ``field OP value`` with ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=``, ``:`` (has: a
  case-insensitive substring; ``field:*`` tests presence), ``=~`` / ``!~`` (regular expression search);
- dotted field paths, with quoted segments for keys holding dots or slashes
  (``labels."run.googleapis.com/execution_name"``); a path ending in a list matches if any element does;
- values as quoted strings (``\\"`` and ``\\\\`` escapes) or bare words (``ERROR``,
  ``2024-01-01T00:00:00Z``), and value groups ``field=("a" OR "b")``;
- ``NOT`` (also ``-term``), ``OR`` and ``AND`` -- in that order of precedence: ``a AND b OR c`` is
  ``a AND (b OR c)``, as the query language documents -- parentheses, and implicit ``AND`` between adjacent
  terms; the Boolean operators must be capitalised (a lowercase ``and`` is a search term);
- a bare term (``"disk full"``) matches entries holding it (case-insensitively) in any string field.

How values order is the caller's (``Field.key``): severities by their enum rank, timestamps as instants,
everything else as text. A filter that does not parse raises :class:`FilterError` with Logging's message
shape (``Unparseable filter: syntax error at line 1, column 14, token 'AND'`` -- the shape as remembered
from gcloud output, not checked against a recording).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

_OPERATORS = ("=~", "!~", ">=", "<=", "!=", "=", "<", ">", ":")
_KEYWORDS = ("AND", "OR", "NOT")
# Characters that end a bare word outside a value (a value may hold ':' -- timestamps, URLs).
_WORD_END = set(' \t\r\n()=<>!:"')
_VALUE_END = set(' \t\r\n()"')


class FilterError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Token:
    kind: str  # "word", "string", "op", "(", ")", "end"
    text: str
    pos: int
    segments: tuple[str, ...] = ()


def _syntax_error(source: str, token: Token) -> FilterError:
    line = source.count("\n", 0, token.pos) + 1
    column = token.pos - (source.rfind("\n", 0, token.pos) + 1) + 1
    shown = token.text if token.kind != "end" else "<EOF>"
    return FilterError(f"Unparseable filter: syntax error at line {line}, column {column}, token '{shown}'")


def _read_string(source: str, i: int) -> tuple[str, int]:
    """The quoted string starting at ``source[i] == '"'``: (its value, the index after it)."""
    out: list[str] = []
    j = i + 1
    while j < len(source):
        c = source[j]
        if c == "\\" and j + 1 < len(source):
            nxt = source[j + 1]
            out.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
            j += 2
            continue
        if c == '"':
            return "".join(out), j + 1
        out.append(c)
        j += 1
    raise FilterError(f"Unparseable filter: unterminated string at column {i + 1}")


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(source)
    after_op = False  # the word after an operator is a value, which may hold ':' and '.'
    group = 0  # depth inside a value group `field=(a OR b)`, whose words are values too
    while i < n:
        c = source[i]
        if c.isspace():
            i += 1
            continue
        if c in "()":
            if c == "(" and (after_op or group):
                group += 1
            elif c == ")" and group:
                group -= 1
            after_op = False
            tokens.append(Token(c, c, i))
            i += 1
            continue
        op = next((o for o in _OPERATORS if source.startswith(o, i)), None)
        if op is not None:
            tokens.append(Token("op", op, i))
            i += len(op)
            after_op = True
            continue
        if c == "!":
            tokens.append(Token("word", c, i))  # a lone '!' is a syntax error the parser reports
            i += 1
            continue
        if c == '"':
            value, j = _read_string(source, i)
            tokens.append(Token("string", value, i, (value,)))
            i = j
            after_op = False
            continue
        # A bare word; outside a value it is a field path whose segments may be quoted.
        start, segments, current = i, [], []
        as_value = after_op or group > 0
        end_chars = _VALUE_END if as_value else _WORD_END
        while i < n and source[i] not in end_chars:
            if not as_value and source[i] == ".":
                segments.append("".join(current))
                current = []
                i += 1
                if i < n and source[i] == '"':
                    value, i = _read_string(source, i)
                    current = [value]
                continue
            current.append(source[i])
            i += 1
        segments.append("".join(current))
        tokens.append(Token("word", source[start:i], start, tuple(segments)))
        after_op = False
    tokens.append(Token("end", "", n))
    return tokens


# --- the tree ----------------------------------------------------------------------------------------------


@dataclass
class Node:
    pass


@dataclass
class And(Node):
    parts: list[Node]


@dataclass
class Or(Node):
    parts: list[Node]


@dataclass
class Not(Node):
    part: Node


@dataclass
class Compare(Node):
    path: tuple[str, ...]
    op: str
    #: One value, or ("OR"|"AND", [values]) for a value group.
    value: str | tuple[str, list[str]]


@dataclass
class Search(Node):
    text: str


@dataclass
class Query:
    """A parsed filter; an empty filter matches everything."""

    root: Node | None
    source: str = ""
    paths: set[tuple[str, ...]] = field(default_factory=set)

    def matches(self, fields: Callable[[tuple[str, ...]], list[Any]], *, key: KeyFn | None = None) -> bool:
        """Does the object whose field ``path`` reads as ``fields(path)`` (``[]`` when absent) match?"""
        return self.root is None or _eval(self.root, fields, key or _text_key)

    def walk(self) -> Iterator[Node]:
        stack = [self.root] if self.root else []
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, And | Or):
                stack.extend(node.parts)
            elif isinstance(node, Not):
                stack.append(node.part)


KeyFn = Callable[[tuple[str, ...], Any], Any]


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0
        self.paths: set[tuple[str, ...]] = set()

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, token: Token | None = None) -> FilterError:
        return _syntax_error(self.source, token or self.peek())

    def keyword(self, word: str) -> bool:
        t = self.peek()
        return t.kind == "word" and t.text == word

    def expression(self) -> Node:
        # AND (explicit or implied by adjacency) binds loosest.
        parts = [self.disjunction()]
        while True:
            t = self.peek()
            if t.kind in ("end", ")"):
                break
            if self.keyword("AND"):
                self.take()
            parts.append(self.disjunction())
        return parts[0] if len(parts) == 1 else And(parts)

    def disjunction(self) -> Node:
        parts = [self.negation()]
        while self.keyword("OR"):
            self.take()
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else Or(parts)

    def negation(self) -> Node:
        if self.keyword("NOT"):
            self.take()
            return Not(self.negation())
        t = self.peek()
        if t.kind == "word" and t.text.startswith("-") and len(t.text) > 1:
            # `-field=value` is NOT; re-read the word without its dash.
            self.tokens[self.i] = Token("word", t.text[1:], t.pos + 1, (t.segments[0][1:], *t.segments[1:]))
            return Not(self.primary())
        return self.primary()

    def primary(self) -> Node:
        t = self.peek()
        if t.kind == "(":
            self.take()
            if self.peek().kind == ")":
                raise self.fail()
            node = self.expression()
            if self.peek().kind != ")":
                raise self.fail()
            self.take()
            return node
        if t.kind == "string":
            self.take()
            if self.peek().kind == "op":
                raise self.fail()
            return Search(t.text)
        if t.kind == "word" and t.text not in _KEYWORDS and t.text != "!":
            self.take()
            if self.peek().kind != "op":
                return Search(t.text)
            op = self.take().text
            if any(not s for s in t.segments):
                raise self.fail(t)
            self.paths.add(t.segments)
            return Compare(t.segments, op, self.value())
        raise self.fail()

    def value(self) -> str | tuple[str, list[str]]:
        t = self.peek()
        if t.kind == "string" or (t.kind == "word" and t.text not in _KEYWORDS and t.text != "!"):
            self.take()
            return t.text
        if t.kind == "(":
            self.take()
            values, joiner = [], ""
            while True:
                v = self.peek()
                if v.kind not in ("word", "string") or (v.kind == "word" and v.text in _KEYWORDS):
                    raise self.fail()
                values.append(self.take().text)
                if self.peek().kind == ")":
                    self.take()
                    return (joiner or "OR", values)
                if self.keyword("OR") or self.keyword("AND"):
                    word = self.take().text
                    if joiner and word != joiner:
                        raise self.fail()
                    joiner = word
                else:
                    joiner = joiner or "AND"  # adjacency is AND, as between terms
                    if joiner != "AND":
                        raise self.fail()
        raise self.fail()


def parse_filter(source: str) -> Query:
    """Parse ``source``; raises :class:`FilterError` (the caller answers 400 INVALID_ARGUMENT)."""
    if not source.strip():
        return Query(None, source)
    parser = _Parser(source)
    root = parser.expression()
    if parser.peek().kind != "end":
        raise parser.fail()
    return Query(root, source, parser.paths)


# --- evaluation ----------------------------------------------------------------------------------------------


def _text_key(_path: tuple[str, ...], value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return value
    return str(value)


def _numeric(a: Any, b: Any) -> tuple[Any, Any]:
    """Numbers compare as numbers when both sides read as one ("42" > "9")."""
    if isinstance(a, str) and isinstance(b, str):
        try:
            return float(a), float(b)
        except ValueError:
            return a, b
    if isinstance(a, int | float) and isinstance(b, str):
        try:
            return a, float(b)
        except ValueError:
            return str(a), b
    return a, b


def _compare(path: tuple[str, ...], op: str, actual: Any, expected: str, key: KeyFn) -> bool:
    if op == ":":
        if expected == "*":
            return True
        return expected.lower() in str(_text_key(path, actual)).lower()
    if op in ("=~", "!~"):
        try:
            found = re.search(expected, str(_text_key(path, actual))) is not None
        except re.error as exc:
            raise FilterError(f"Invalid regular expression {expected!r}: {exc}") from None
        return found if op == "=~" else not found
    a, b = _numeric(key(path, actual), key(path, expected))
    try:
        if op == "=":
            return a == b
        if op == "!=":
            return a != b
        if op == ">":
            return a > b
        if op == ">=":
            return a >= b
        if op == "<":
            return a < b
        return a <= b
    except TypeError:
        return str(a) == str(b) if op == "=" else op == "!="


def _eval(node: Node, fields: Callable[[tuple[str, ...]], list[Any]], key: KeyFn) -> bool:
    if isinstance(node, And):
        return all(_eval(p, fields, key) for p in node.parts)
    if isinstance(node, Or):
        return any(_eval(p, fields, key) for p in node.parts)
    if isinstance(node, Not):
        return not _eval(node.part, fields, key)
    if isinstance(node, Search):
        needle = node.text.lower()
        return any(needle in s.lower() for s in _strings(fields(())))
    assert isinstance(node, Compare)
    values = fields(node.path)
    if not values:
        return False
    if isinstance(node.value, tuple):
        joiner, options = node.value
        hits = [any(_compare(node.path, node.op, v, o, key) for v in values) for o in options]
        return any(hits) if joiner == "OR" else all(hits)
    if node.op in ("!=", "!~"):
        # Every value must differ (a list field "!=" x holds no x).
        return all(_compare(node.path, node.op, v, node.value, key) for v in values)
    return any(_compare(node.path, node.op, v, node.value, key) for v in values)


def _strings(values: list[Any]) -> Iterator[str]:
    for v in values:
        if isinstance(v, dict):
            yield from _strings(list(v.values()))
        elif isinstance(v, list):
            yield from _strings(v)
        elif v is not None:
            yield str(v)


def dict_fields(obj: dict[str, Any]) -> Callable[[tuple[str, ...]], list[Any]]:
    """Read a path from a JSON object: the empty path is the whole object (for bare-term search); a list on
    the way fans out."""

    def read(path: tuple[str, ...]) -> list[Any]:
        current: list[Any] = [obj]
        for segment in path:
            nxt: list[Any] = []
            for c in current:
                if isinstance(c, dict) and segment in c:
                    v = c[segment]
                    nxt.extend(v if isinstance(v, list) else [v])
                elif isinstance(c, list):
                    nxt.extend(x[segment] for x in c if isinstance(x, dict) and segment in x)
            current = nxt
        return current

    return read
