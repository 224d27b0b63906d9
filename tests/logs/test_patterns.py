"""The CloudWatch filter pattern matcher (logs/patterns.py): every syntax it claims, and refusals."""

from __future__ import annotations

import pytest

from firebox.logs.api import InvalidLogParameter, LogsNotImplemented
from firebox.logs.patterns import compile_pattern

REQUEST = "8f5a4d6b-1111-2222-3333-444455556666"
TEXT_LINES = [
    f"START RequestId: {REQUEST} Version: $LATEST\n",
    f"[ERROR]\t2024-01-01T00:00:00.000Z\t{REQUEST}\tdatabase unreachable\n",
    f"[WARNING]\t2024-01-01T00:00:00.000Z\t{REQUEST}\tslow response: 1200 ms\n",
    "Task timed out after 3.00 seconds\n",
    "[ERROR] ValueError: boom\nTraceback (most recent call last):\n  File \"/var/task/app.py\"\n",
    "healthcheck ERROR ignored\n",
]


def matching(pattern: str, lines: list[str] = TEXT_LINES) -> list[int]:
    compiled = compile_pattern(pattern)
    return [i for i, line in enumerate(lines) if compiled.matches(line)]


@pytest.mark.parametrize("pattern", ["", "   ", "\t"])
def test_empty_pattern_matches_everything(pattern: str) -> None:
    assert matching(pattern) == list(range(len(TEXT_LINES)))
    assert compile_pattern(pattern).matches_all


def test_terms_are_case_sensitive_and_all_must_appear() -> None:
    assert matching("ERROR") == [1, 4, 5]
    assert matching("error") == []
    assert matching("ERROR database") == [1]
    assert matching("ERROR Traceback boom") == [4]
    assert compile_pattern("ERROR database").required_terms == ("ERROR", "database")


def test_quoted_phrases() -> None:
    assert matching('"Task timed out"') == [3]
    assert matching('"timed  out"') == []  # exact, spaces included
    assert matching(f'"{REQUEST}"') == [0, 1, 2]
    assert matching('"slow response:" "1200 ms"') == [2]
    assert matching(r'"File \"/var/task"') == [4]


def test_optional_terms_any_of() -> None:
    assert matching("?WARNING ?timed") == [2, 3]
    assert matching('?"database unreachable" ?Traceback') == [1, 4]
    # Plain terms still all apply next to the `?` alternatives.
    assert matching("ERROR ?database ?boom") == [1, 4]


def test_excluded_terms() -> None:
    assert matching("ERROR -healthcheck") == [1, 4]
    assert matching('ERROR -"database unreachable" -healthcheck') == [4]
    assert matching("-ERROR") == [0, 2, 3]


def test_regex_terms() -> None:
    assert matching("%[0-9]{4} ms%") == [2]
    assert matching("?%time[sd]% ?%^START%") == [0, 3]


@pytest.mark.parametrize("pattern", ['"unterminated', 'ab"c', '""', "%", "%(%"])
def test_bad_text_patterns_are_invalid_parameters(pattern: str) -> None:
    with pytest.raises(InvalidLogParameter) as info:
        compile_pattern(pattern)
    assert info.value.code == "InvalidParameterException"
    assert info.value.message.startswith("Invalid filter pattern")


JSON_LINES = [
    '{"timestamp": "t", "level": "ERROR", "message": "db down", "requestId": "r1", "latency": 12.5}\n',
    '{"level": "INFO", "message": "ok", "latency": 3, "user": {"id": 7, "tags": ["a", "b"]}, "flag": true}\n',
    '{"level": "WARN", "message": "request timeout after 3 s", "latency": 5, "flag": false, "n": null}\n',
    "[ERROR] not json at all\n",
    '["a", "list"]\n',
    '{"level": "ERROR", "code": 200, "message": "weird"}\n',
]


def json_matching(pattern: str) -> list[int]:
    return matching(pattern, JSON_LINES)


def test_json_string_equality_and_wildcards() -> None:
    assert json_matching('{ $.level = "ERROR" }') == [0, 5]
    assert json_matching("{ $.level = ERROR }") == [0, 5]
    assert json_matching('{$.level="ERROR"}') == [0, 5]
    assert json_matching('{ $.level != "ERROR" }') == [1, 2]
    assert json_matching('{ $.message = "*timeout*" }') == [2]
    assert json_matching('{ $.message = "db*" }') == [0]
    assert json_matching('{ $.message = "timeout" }') == []


def test_json_numbers() -> None:
    assert json_matching("{ $.latency > 5 }") == [0]
    assert json_matching("{ $.latency >= 5 }") == [0, 2]
    assert json_matching("{ $.latency < 5 }") == [1]
    assert json_matching("{ $.latency <= 3 }") == [1]
    assert json_matching("{ $.latency = 12.5 }") == [0]
    assert json_matching("{ $.latency != 3 }") == [0, 2]
    assert json_matching("{ $.code = 200 }") == [5]
    assert json_matching('{ $.code = "200" }') == [5]  # the number's JSON text
    assert json_matching("{ $.missing > 1 }") == []


def test_json_nested_members_and_arrays() -> None:
    assert json_matching("{ $.user.id = 7 }") == [1]
    assert json_matching('{ $.user.tags[1] = "b" }') == [1]
    assert json_matching('{ $.user.tags[5] = "b" }') == []


def test_json_and_or_parentheses() -> None:
    assert json_matching('{ $.level = "ERROR" && $.latency > 10 }') == [0]
    assert json_matching('{ $.level = "INFO" || $.level = "WARN" }') == [1, 2]
    assert json_matching('{ ($.level = "INFO" || $.level = "WARN") && $.latency > 4 }') == [2]
    # && binds tighter than ||
    assert json_matching('{ $.level = "INFO" || $.level = "WARN" && $.latency > 100 }') == [1]


def test_json_special_values() -> None:
    assert json_matching("{ $.flag IS TRUE }") == [1]
    assert json_matching("{ $.flag IS FALSE }") == [2]
    assert json_matching("{ $.n IS NULL }") == [2]
    assert json_matching("{ $.flag NOT EXISTS }") == [0, 5]
    assert json_matching("{ $.flag EXISTS }") == [1, 2]


@pytest.mark.parametrize("pattern", ["{ $.level = }", "{ level = 1 }", "{ $.a > x }", "{ $.a = 1",
                                     "{ $.a = 1 } extra", "{ $.a IS MAYBE }", "{ ($.a = 1 }"])
def test_bad_json_patterns_are_invalid_parameters(pattern: str) -> None:
    with pytest.raises(InvalidLogParameter):
        compile_pattern(pattern)


def test_space_delimited_patterns_are_refused_plainly() -> None:
    with pytest.raises(LogsNotImplemented) as info:
        compile_pattern("[ip, user, status=404]")
    assert "space-delimited" in info.value.message
