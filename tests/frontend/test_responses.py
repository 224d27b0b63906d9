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
