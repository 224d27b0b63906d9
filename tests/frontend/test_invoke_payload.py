"""The Invoke payload's JSON check takes a shortcut for plain UTF-8 JSON text (handlers/invoke.py:
`_is_plain_json`); whatever it is given, it must accept and refuse exactly what json.loads does,
with json.loads's words in the message."""

from __future__ import annotations

import json

import pytest

from firebox.errors import InvalidRequestContent
from firebox.frontend.handlers.invoke import _check_json

PAYLOADS = [
    b"{}", b"[]", b"0", b"-1.5e3", b'"text"', b"null", b"true", b'{"a": [1, 2, {"b": null}]}',
    "{\"é\": \"ü€😀\"}".encode(),
    b" {}", b"{} ", b"\n{}\n", b"\t[1]\r\n",  # white space around: json.loads allows it
    b"{}x", b"{} {}", b"{", b"}", b"[1,]", b"{'a': 1}", b"nul", b"01", b"NaN", b"-Infinity", b"[NaN]",
    b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark: json.loads on bytes accepts it
    "{}".encode("utf-16"), "{}".encode("utf-16-le"), "{}".encode("utf-16-be"), "[1]".encode("utf-32"),
    "[1]".encode("utf-32-le"), b"\x00{", b"{\x00", b"\xff\xfe", b"\xfe\xff",
    b'"\xed\xa0\x80"',  # a lone surrogate, encoded as UTF-8 would (json.loads decodes with surrogatepass)
    b'"\xff"', b"\x80", b'"\xc3"',  # not UTF-8
    b'"\\ud800"', b'"a\\u00e9"', b'"\x01"',  # escapes, and a control character json refuses
    b"[" * 50 + b"]" * 50,
]


def _json_loads_verdict(payload: bytes) -> str | None:
    try:
        json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"Could not parse request body into json: Could not parse payload into json: {exc}"
    return None


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
def test_the_check_says_what_json_loads_says(payload: bytes) -> None:
    expected = _json_loads_verdict(payload)
    if expected is None:
        _check_json(payload)
    else:
        with pytest.raises(InvalidRequestContent) as refused:
            _check_json(payload)
        assert str(refused.value) == expected


def test_an_empty_payload_is_no_json_to_check() -> None:
    _check_json(b"")
