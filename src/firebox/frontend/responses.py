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
from dataclasses import dataclass
from typing import Any

from firebox.errors import ApiError, ServiceError

log = logging.getLogger("firebox.frontend")


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _headers(request_id: str, extra: dict[str, str], content_type: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-amzn-requestid", request_id.encode())]
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in extra.items()]
    return headers


def success(status: int, body: Any, request_id: str, extra: dict[str, str]) -> HttpResponse:
    if body is None:
        return HttpResponse(status, _headers(request_id, extra, None), b"")
    if isinstance(body, bytes):
        given = any(k.lower() == "content-type" for k in extra)
        return HttpResponse(status, _headers(request_id, extra, None if given else "application/octet-stream"), body)
    data = json.dumps(body, separators=(",", ":")).encode()
    given = any(k.lower() == "content-type" for k in extra)
    return HttpResponse(status, _headers(request_id, extra, None if given else "application/json"), data)


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
    return HttpResponse(exc.status, _headers(request_id, headers, "application/json"), data)
