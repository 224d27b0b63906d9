"""The application: one request in, one response out.

    route by the service model -> parse + validate -> handler -> respond

`FrontendApp.handle` is a plain coroutine called by the HTTP server (`edge.py`) with what it
parsed; the body arrives whole, already bounded by `max_request_bytes`.
Platform routes outside the Lambda API: `GET /health` (200 once the platform has started),
`GET /_firebox/code/<sha256 hex>` (the zip behind GetFunction's `Code.Location`),
`GET /_firebox/events` (asynchronous events per function, for `firebox events`) and
`GET /_firebox/stats` (the components' statistics: sandboxes, stem cells, backend) and
`GET /_firebox/hops?after=N` (the invoke path's hop timings, when traced: see `firebox.hops`).
Framework-free on purpose: routing is data from the service model, and the invoke hot path
should not pay for a framework's middleware stack or an ASGI server's message plumbing.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from urllib.parse import parse_qs

from firebox import hops
from firebox.errors import (
    InvalidParameterValue,
    NotImplementedYet,
    RequestEntityTooLarge,
    UnknownOperation,
)
from firebox.frontend import responses
from firebox.frontend.api import Handler, Request, Services
from firebox.frontend.handlers import HANDLERS
from firebox.frontend.model import JSON_TARGETS, Operation, ServiceModel, lambda_model
from firebox.frontend.parse import parse_input
from firebox.ids import request_id

log = logging.getLogger("firebox.access")

_CODE_PATH = re.compile(r"/_firebox/code/([0-9a-f]{64})")


class FrontendApp:
    def __init__(self, services: Services, *, max_request_bytes: int, handlers: dict[str, Handler] | None = None) -> None:
        self._services = services
        self.max_request_bytes = max_request_bytes
        self._handlers = HANDLERS if handlers is None else handlers
        self._model: ServiceModel = lambda_model()
        self.ready = False  # GET /health answers 503 until the server sets this

    async def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None, server: tuple[str, int]
    ) -> responses.HttpResponse:
        """Answer one request; never raises: every failure becomes AWS's error shape.

        `target` is the request-target (path and query, as sent); `headers` has lower-case
        names; `body` is None when it was over `max_request_bytes` (the server kept none of it:
        the answer is RequestEntityTooLargeException, named for the operation the request
        routes to); `server` is the (host, port) the request came in on.

        One coroutine, no helper coroutine and no object for what is known so far (the request
        id, the operation once routed): 2.6k instructions less per request."""
        # The access log line is for debugging: by default it costs one level check.
        timed = log.isEnabledFor(logging.DEBUG)
        started = time.perf_counter() if timed else 0.0
        rid = request_id()
        operation: str | None = None  # once routed: for the error response and the access log
        try:
            path, _, query_string = target.partition("?")
            query = parse_qs(query_string, keep_blank_values=True) if query_string else {}
            if method == "GET" and path.startswith(("/health", "/_firebox/")):
                operation = _platform_operation(path)
                response = await self._platform_route(operation, path, query, rid)
            else:
                target_header = headers.get("x-amz-target")
                if method == "POST" and target_header:
                    model, op, labels = self._route_target(target_header)
                    content_type = "application/x-amz-json-1.1"
                else:
                    model = self._model
                    matched = model.match(method, path, query)
                    if matched is None:
                        raise UnknownOperation(f"No Lambda API operation matches {method} {path}.")
                    op, labels = matched
                    content_type = None
                operation = op.name
                if body is None:
                    limit = self.max_request_bytes
                    raise RequestEntityTooLarge(f"Request must be smaller than {limit} bytes for the {operation} operation")
                params = parse_input(model, op, labels, query, headers, body)
                handler = self._handlers.get(operation)
                if handler is None:
                    raise NotImplementedYet(f"Firebox does not implement the {operation} operation yet.")
                host = headers.get("host") or f"{server[0]}:{server[1]}"
                reply = await handler(self._services, Request(operation, params, headers, rid, f"http://{host}"))
                status = op.status if reply.status is None else reply.status
                extra = reply.headers if content_type is None else {"Content-Type": content_type, **reply.headers}
                response = responses.success(status, reply.body, rid, extra)
                hops.mark("rendered")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a response; the server goes on
            json_protocol = "x-amz-target" in headers
            response = responses.failure(exc, rid, operation, json_protocol=json_protocol)
        if timed:
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.debug("%s %s %s %d %.1fms", method, target, operation or "-", response.status, elapsed_ms)
        return response

    async def _platform_route(self, operation: str | None, path: str, query: dict[str, list[str]],
                              rid: str) -> responses.HttpResponse:
        """GET routes of Firebox's own, outside the Lambda API (see the module docstring)."""
        if operation == "Health":
            status = 200 if self.ready else 503
            return responses.success(status, {"status": "ok" if self.ready else "starting"}, rid, {})
        if operation == "EventStatistics":
            stats = await self._services.events.statistics()
            body = {name: dataclasses.asdict(s) for name, s in stats.items()}
            return responses.success(200, body, rid, {})
        if operation == "PlatformStatistics":
            return responses.success(200, dict(self._services.statistics()), rid, {})
        if operation == "HopTimings":
            if not hops.enabled():
                raise UnknownOperation("Hop timings are off: start the server with FIREBOX_TRACE_HOPS=1.")
            after = query.get("after", ["0"])[-1]
            if not after.isdigit():
                raise InvalidParameterValue(f"after must be a trace count, not {after!r}")
            return responses.success(200, hops.summary(after=int(after)), rid, {})
        if operation == "GetCodePackage":
            data = await self._services.registry.code_blob(path.rsplit("/", 1)[1])
            return responses.success(200, data, rid, {})
        raise UnknownOperation(f"No Lambda API operation matches GET {path}.")

    def _route_target(self, target: str) -> tuple[ServiceModel, Operation, dict[str, str]]:
        prefix, _, name = target.partition(".")
        load = JSON_TARGETS.get(prefix)
        op = load().operation(name) if load is not None else None
        if load is None or op is None:
            raise UnknownOperation(f"Unknown operation {target}.")
        return load(), op, {}


_PLATFORM_OPERATIONS = {"/health": "Health", "/_firebox/events": "EventStatistics",
                        "/_firebox/stats": "PlatformStatistics", "/_firebox/hops": "HopTimings"}


def _platform_operation(path: str) -> str | None:
    """The name a platform route goes by in the access log and error responses; None: no route."""
    if path in _PLATFORM_OPERATIONS:
        return _PLATFORM_OPERATIONS[path]
    return "GetCodePackage" if _CODE_PATH.fullmatch(path) else None
