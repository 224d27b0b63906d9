"""Responses carry their header lines rendered once (responses.py `_head`): the request id
first, a default content type unless the handler names one (in any case), the handler's headers
with lower-case names."""

from __future__ import annotations

from firebox.errors import ResourceNotFound
from firebox.frontend.responses import failure, success


def test_a_json_body_gets_the_default_content_type_after_the_request_id() -> None:
    response = success(200, {"a": 1}, "rid", {"X-Amz-Executed-Version": "$LATEST"})
    assert response.head == (b"x-amzn-requestid: rid\r\ncontent-type: application/json\r\n"
                             b"x-amz-executed-version: $LATEST\r\n")
    assert response.body == b'{"a":1}'


def test_a_content_type_of_the_handler_replaces_the_default() -> None:
    response = success(200, b"raw", "rid", {"Content-TYPE": "application/json", "X-Amz-Function-Error": "Unhandled"})
    assert response.head == (b"x-amzn-requestid: rid\r\ncontent-type: application/json\r\n"
                             b"x-amz-function-error: Unhandled\r\n")


def test_no_body_no_content_type() -> None:
    assert success(204, None, "rid", {}).head == b"x-amzn-requestid: rid\r\n"


def test_an_error_names_its_type() -> None:
    response = failure(ResourceNotFound("Function not found: f"), "rid", "Invoke")
    assert response.status == 404
    assert b"x-amzn-errortype: ResourceNotFoundException" in response.head
    assert response.head.startswith(b"x-amzn-requestid: rid\r\ncontent-type: application/json\r\n")


def _reference_head(request_id: str, extra: dict[str, str], default_type: str | None) -> bytes:
    """The rendering before the rendered lines were remembered."""
    lines = [f"x-amzn-requestid: {request_id}\r\n"]
    for name, value in extra.items():
        name = name.lower()
        if name == "content-type":
            default_type = None
        lines.append(f"{name}: {value}\r\n")
    if default_type:
        lines.insert(1, f"content-type: {default_type}\r\n")
    return "".join(lines).encode("latin-1")


def test_remembered_renderings_are_the_renderings_whatever_the_order_and_the_repeats() -> None:
    from firebox.frontend import responses

    extras = [{}, {"X-Amz-Executed-Version": "$LATEST"}, {"X-Amz-Executed-Version": "3"},
              {"X-Amz-Executed-Version": "$LATEST", "Content-Type": "application/json"},
              {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST"},
              {"X-Amz-Executed-Version": "$LATEST", "X-Amz-Function-Error": "Unhandled", "Content-Type": "application/json"},
              {"X-Amz-Log-Result": "x" * 4000, "Content-Type": "text/plain"}, {"Retry-After": "1"}]
    for round_ in range(3):  # the first renders, the others find what was remembered
        for number, extra in enumerate(extras):
            for default_type in (None, "application/json", "application/octet-stream"):
                rid = f"rid-{round_}-{number}"
                assert responses._head(rid, extra, default_type) == _reference_head(rid, extra, default_type)
    assert all(len(lines) <= responses._RENDERED_MAX_BYTES for lines in responses._RENDERED.values())


def test_a_header_value_outside_latin_1_still_fails_to_render() -> None:
    import pytest

    for _ in range(2):
        with pytest.raises(UnicodeEncodeError):
            success(200, b"", "rid", {"X-Thing": "\u20ac"})
