"""CloudWatch Logs filter patterns: parse once, then match messages.

Supported syntax (what FilterLogEvents takes)
---------------------------------------------
Text patterns, terms separated by spaces, case-sensitive, a term matching anywhere in the message:

    ERROR                       contains ERROR
    ERROR Exception             contains both (every plain term must appear)
    "Task timed out"            a quoted phrase: spaces and any characters, `\\"` for a quote
    ?ERROR ?WARN                contains at least one of the `?` terms
    ERROR -healthcheck          contains ERROR and not healthcheck (`-` excludes)
    %time(d|out)%               a regular expression term (Python `re` syntax, a superset)

JSON patterns, for messages that are JSON objects:

    { $.level = "ERROR" }              string equality; `*` is a wildcard ("*timeout*")
    { $.level != "DEBUG" }             the field exists and differs
    { $.latency > 5 }                  numeric: = != < > <= >= against a number field
    { $.a.b[0].c = x }                 nested members and array items; unquoted words are strings
    { $.x IS TRUE } / IS FALSE / IS NULL / { $.x NOT EXISTS }
    { ($.a = 1 || $.b = 2) && $.c > 3 }   && binds tighter than ||; parentheses group

An empty (or blank) pattern matches every message. Space-delimited patterns (`[ip, user, ...]`)
are recognised and refused with LogsNotImplemented; anything unparsable raises
InvalidLogParameter.

`required_terms` lists literal substrings every matching message contains, so that the store
can pre-filter in SQL (`instr`) before calling `matches` on what remains.

Known caveats: a term matches as a substring, so `ERROR` also matches `ERRORS`; string equality
against a number field compares the number's JSON text (`{ $.code = "200" }` matches 200).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from firebox.logs.api import InvalidLogParameter, LogsNotImplemented

Predicate = Callable[[Any], bool]


@dataclass(frozen=True)
class FilterPattern:
    text: str
    matches: Callable[[str], bool]
    required_terms: tuple[str, ...]

    @property
    def matches_all(self) -> bool:
        return not self.text.strip()


def _invalid(reason: str) -> InvalidLogParameter:
    return InvalidLogParameter(f"Invalid filter pattern: {reason}")


@lru_cache(maxsize=256)
def compile_pattern(text: str) -> FilterPattern:
    stripped = text.strip()
    if not stripped:
        return FilterPattern(text, lambda _message: True, ())
    if stripped.startswith("{"):
        return _compile_json(text, stripped)
    if stripped.startswith("["):
        raise LogsNotImplemented("Firebox does not support space-delimited filter patterns ([w1, w2, ...]) yet; "
                                 "use terms, quoted phrases or a JSON pattern.")
    return _compile_terms(text, stripped)


# -- text patterns -------------------------------------------------------------------------------


def _compile_terms(text: str, stripped: str) -> FilterPattern:
    required: list[Callable[[str], bool]] = []
    optional: list[Callable[[str], bool]] = []
    excluded: list[Callable[[str], bool]] = []
    literals: list[str] = []
    position = 0
    while position < len(stripped):
        if stripped[position].isspace():
            position += 1
            continue
        kind = stripped[position] if stripped[position] in "?-" else ""
        if kind and position + 1 < len(stripped) and not stripped[position + 1].isspace():
            position += 1
        else:
            kind = ""
        term, is_regex, position = _read_term(stripped, position)
        test = _regex_test(term) if is_regex else _substring_test(term)
        if kind == "?":
            optional.append(test)
        elif kind == "-":
            excluded.append(test)
        else:
            required.append(test)
            if not is_regex:
                literals.append(term)

    def matches(message: str) -> bool:
        return (all(test(message) for test in required)
                and (not optional or any(test(message) for test in optional))
                and not any(test(message) for test in excluded))

    return FilterPattern(text, matches, tuple(literals))


def _read_term(text: str, position: int) -> tuple[str, bool, int]:
    """One term at `position`: (term, is_regex, position after it)."""
    if text[position] == '"':
        chars: list[str] = []
        position += 1
        while position < len(text):
            char = text[position]
            if char == "\\" and position + 1 < len(text):
                chars.append(text[position + 1])
                position += 2
                continue
            if char == '"':
                if not chars:
                    raise _invalid("empty quoted term")
                return "".join(chars), False, position + 1
            chars.append(char)
            position += 1
        raise _invalid(f"unterminated quoted term in {text!r}")
    if text[position] == "%":
        end = text.find("%", position + 1)
        if end <= position + 1:
            raise _invalid(f"unterminated or empty regular expression term in {text!r}")
        return text[position + 1:end], True, end + 1
    end = position
    while end < len(text) and not text[end].isspace():
        end += 1
    term = text[position:end]
    if '"' in term:
        raise _invalid(f"a quote inside the unquoted term {term!r}")
    return term, False, end


def _substring_test(term: str) -> Callable[[str], bool]:
    return lambda message: term in message


def _regex_test(source: str) -> Callable[[str], bool]:
    try:
        compiled = re.compile(source)
    except re.error as exc:
        raise _invalid(f"bad regular expression %{source}%: {exc}") from exc
    return lambda message: compiled.search(message) is not None


# -- JSON patterns -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op>&&|\|\||!=|<=|>=|=|<|>|\(|\)|\{|\})
      | (?P<selector>\$(?:\.[^\s.\[\]=!<>()&|{}]+|\[\d+\])*)
      | (?P<word>[^\s=!<>()&|{}"]+)
    )""",
    re.VERBOSE,
)
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_MISSING = object()


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        found = _TOKEN.match(text, position)
        if found is None or found.end() == position:
            raise _invalid(f"unexpected {text[position:position + 10]!r}")
        kind = found.lastgroup
        assert kind is not None
        tokens.append((kind, found.group(kind)))
        position = found.end()
    return tokens


class _JsonParser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.index = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _invalid("the pattern ends too early")
        if expected is not None and token[1] != expected:
            raise _invalid(f"expected {expected!r}, found {token[1]!r}")
        self.index += 1
        return token

    def parse(self) -> Predicate:
        self.take("{")
        predicate = self.disjunction()
        self.take("}")
        if self.peek() is not None:
            raise _invalid(f"unexpected {self.peek()[1]!r} after the closing brace")  # type: ignore[index]
        return predicate

    def disjunction(self) -> Predicate:
        parts = [self.conjunction()]
        while self.peek() == ("op", "||"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else (lambda doc: any(p(doc) for p in parts))

    def conjunction(self) -> Predicate:
        parts = [self.unary()]
        while self.peek() == ("op", "&&"):
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda doc: all(p(doc) for p in parts))

    def unary(self) -> Predicate:
        if self.peek() == ("op", "("):
            self.take()
            inner = self.disjunction()
            self.take(")")
            return inner
        kind, selector = self.take()
        if kind != "selector":
            raise _invalid(f"expected a selector like $.field, found {selector!r}")
        path = _path(selector)
        token = self.take()
        if token == ("word", "IS"):
            _, what = self.take()
            expected = {"TRUE": True, "FALSE": False, "NULL": None}.get(what, _MISSING)
            if expected is _MISSING:
                raise _invalid(f"expected TRUE, FALSE or NULL after IS, found {what!r}")
            return lambda doc: _is(_resolve(doc, path), expected)
        if token == ("word", "NOT"):
            self.take("EXISTS")
            return lambda doc: _resolve(doc, path) is _MISSING
        if token == ("word", "EXISTS"):
            return lambda doc: _resolve(doc, path) is not _MISSING
        if token[0] != "op" or token[1] not in ("=", "!=", "<", ">", "<=", ">="):
            raise _invalid(f"expected a comparison after {selector}, found {token[1]!r}")
        return _comparison(path, token[1], self.take())


def _path(selector: str) -> tuple[str | int, ...]:
    steps: list[str | int] = []
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", selector[1:]):
        steps.append(int(index) if index else name)
    return tuple(steps)


def _resolve(doc: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        if isinstance(step, int):
            if not isinstance(doc, list) or step >= len(doc):
                return _MISSING
        elif not isinstance(doc, dict) or step not in doc:
            return _MISSING
        doc = doc[step]
    return doc


def _is(value: Any, expected: bool | None) -> bool:
    return value is expected if value is not _MISSING else False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _comparison(path: tuple[str | int, ...], op: str, literal: tuple[str, str]) -> Predicate:
    kind, raw = literal
    if kind not in ("string", "word"):
        raise _invalid(f"expected a value after {op}, found {raw!r}")
    number = float(raw) if kind == "word" and _NUMBER.fullmatch(raw) else None
    if op in ("<", ">", "<=", ">="):
        if number is None:
            raise _invalid(f"{op} needs a number, found {raw!r}")
        compare = {"<": float.__lt__, ">": float.__gt__, "<=": float.__le__, ">=": float.__ge__}[op]

        def numeric(doc: Any) -> bool:
            value = _resolve(doc, path)
            return _is_number(value) and math.isfinite(value) and compare(float(value), number)

        return numeric
    text = json.loads(raw) if kind == "string" else raw
    wildcard = re.compile(".*".join(re.escape(part) for part in text.split("*")), re.DOTALL) if "*" in text else None

    def equal(value: Any) -> bool:
        if number is not None and _is_number(value):
            return float(value) == number
        if isinstance(value, (dict, list)) or value is None:
            return False
        shown = value if isinstance(value, str) else json.dumps(value)
        return wildcard.fullmatch(shown) is not None if wildcard is not None else shown == text

    if op == "=":
        return lambda doc: (value := _resolve(doc, path)) is not _MISSING and equal(value)
    return lambda doc: (value := _resolve(doc, path)) is not _MISSING and not equal(value)


def _compile_json(text: str, stripped: str) -> FilterPattern:
    predicate = _JsonParser(stripped).parse()

    def matches(message: str) -> bool:
        if "{" not in message:
            return False
        try:
            doc = json.loads(message)
        except ValueError:
            return False
        return isinstance(doc, dict) and bool(predicate(doc))

    return FilterPattern(text, matches, ("{",))
