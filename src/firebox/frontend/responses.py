"""The one place where results and errors become HTTP responses.

Errors are shaped as AWS Lambda shapes them: the code in the `x-amzn-ErrorType` header, a JSON
body `{"Type": "User", "message": "..."}` (`Message` for ResourceNotFoundException), the HTTP
status of the error, and a request id in `x-amzn-RequestId`. An exception that is not an
`ApiError` is a bug of ours: it is logged with its traceback and answered as a ServiceException,
and the server goes on serving.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from firebox.errors import ApiError, ServiceError

log = logging.getLogger("firebox.frontend")


class HttpResponse(NamedTuple):
    """Immutable, as a frozen dataclass would be, for half its cost to build (3k instructions less)."""

    status: int
    # Its header lines as they go out, `name: value\r\n` each, lower-case names; rendered here
    # once rather than kept as pairs for the edge to format (11k instructions less per invoke).
    head: bytes
    body: bytes


# The header lines after the request id, by what they were rendered from: a handler's extra
# headers repeat (a warm Invoke's are its executed version and content type), so they are
# rendered once. Only short renderings are remembered (a Log-Result tail is unique and long).
_RENDERED: dict[tuple[object, ...], bytes] = {}
_RENDERED_KEPT = 1024
_RENDERED_MAX_BYTES = 256


def _head(request_id: str, extra: Mapping[str, str], default_type: str | None) -> bytes:
    """The request id, `default_type` unless `extra` names a content type, then `extra`."""
    key = (default_type, *extra.items())
    lines = _RENDERED.get(key)
    if lines is None:
        lines = _lines(extra, default_type)
        if len(lines) <= _RENDERED_MAX_BYTES:
            if len(_RENDERED) >= _RENDERED_KEPT:
                _RENDERED.clear()
            _RENDERED[key] = lines
    return b"x-amzn-requestid: %s\r\n%s" % (request_id.encode("latin-1"), lines)


def _lines(extra: Mapping[str, str], default_type: str | None) -> bytes:
    lines = []
    for name, value in extra.items():
        name = name.lower()
        if name == "content-type":
            default_type = None
        lines.append(f"{name}: {value}\r\n")
    if default_type:
        lines.insert(0, f"content-type: {default_type}\r\n")
    return "".join(lines).encode("latin-1")


def success(status: int, body: Any, request_id: str, extra: Mapping[str, str]) -> HttpResponse:
    if body is None:
        return HttpResponse(status, _head(request_id, extra, None), b"")
    if isinstance(body, bytes):
        return HttpResponse(status, _head(request_id, extra, "application/octet-stream"), body)
    data = json.dumps(body, separators=(",", ":")).encode()
    return HttpResponse(status, _head(request_id, extra, "application/json"), data)


def failure(exc: BaseException, request_id: str, operation: str | None, *, json_protocol: bool = False) -> HttpResponse:
    """`json_protocol`: the request came through `X-Amz-Target` (JSON 1.1 services such as
    CloudWatch Logs), whose clients read the error code from `__type` in the body."""
    if not isinstance(exc, ApiError):
        log.error("unexpected error in %s (request %s)", operation or "request", request_id, exc_info=exc)
        exc = ServiceError("An internal error occurred in Firebox; the server log has the details.")
    headers = {"x-amzn-ErrorType": exc.code, **exc.headers()}
    body = exc.body()
    if json_protocol:
        body = {"__type": exc.code, **body}
    data = json.dumps(body, separators=(",", ":")).encode()
    return HttpResponse(exc.status, _head(request_id, headers, "application/json"), data)
