"""The edge's look-up tables of header names and methods give what decoding would."""

from __future__ import annotations

from firebox.frontend.edge import _HEADER_NAMES, _METHODS


def test_a_known_header_name_is_its_lower_case_text() -> None:
    assert _HEADER_NAMES[b"Content-Length"] == "content-length"
    for raw, name in _HEADER_NAMES.items():
        assert name == raw.decode("latin-1").lower()


def test_a_known_method_is_its_text() -> None:
    assert _METHODS[b"POST"] == "POST"
    for raw, method in _METHODS.items():
        assert method == raw.decode("ascii")
