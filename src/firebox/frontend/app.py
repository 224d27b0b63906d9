"""The ASGI application: one request in, one response out.

    receive body (bounded) -> route by the service model -> parse + validate -> handler -> respond

Platform routes outside the Lambda API: `GET /health` (200 once the platform has started),
`GET /_firebox/code/<sha256 hex>` (the zip behind GetFunction's `Code.Location`),
`GET /_firebox/events` (asynchronous events per function, for `firebox events`) and
`GET /_firebox/stats` (the components' statistics: sandboxes, stem cells, backend).
Framework-free on purpose: routing is data from the service model, and the invoke hot path
should not pay for a framework's middleware stack.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from firebox.errors import NotImplementedYet, RequestEntityTooLarge, UnknownOperation
from firebox.frontend import responses
from firebox.frontend.api import Handler, Request, Services
from firebox.frontend.handlers import HANDLERS
from firebox.frontend.model import JSON_TARGETS, Operation, ServiceModel, lambda_model
from firebox.frontend.parse import parse_input

log = logging.getLogger("firebox.access")

_CODE_PATH = re.compile(r"/_firebox/code/([0-9a-f]{64})")

Scope = dict[str, Any]


@dataclass
class _Exchange:
    """What is known about one request so far, for the error response and the access log."""

    request_id: str
    operation: str | None = None


class FrontendApp:
    def __init__(self, services: Services, *, max_request_bytes: int, handlers: dict[str, Handler] | None = None) -> None:
        self._services = services
        self._max_request_bytes = max_request_bytes
        self._handlers = HANDLERS if handlers is None else handlers
        self._model: ServiceModel = lambda_model()
        self.ready = False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        exchange = _Exchange(request_id)
        try:
            response = await self._handle(scope, receive, exchange)
        except Exception as exc:  # every failure becomes a response; the server goes on
            json_protocol = any(k == b"x-amz-target" for k, _ in scope["headers"])
            response = responses.failure(exc, request_id, exchange.operation, json_protocol=json_protocol)
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        await send({"type": "http.response.body", "body": response.body})
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info(
            "%s %s %s %d %.1fms", scope["method"], scope["path"], exchange.operation or "-", response.status, elapsed_ms
        )

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Any, exchange: _Exchange) -> responses.HttpResponse:
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)

        if method == "GET" and path == "/health":
            status = 200 if self.ready else 503
            exchange.operation = "Health"
            return responses.success(status, {"status": "ok" if self.ready else "starting"}, exchange.request_id, {})
        if method == "GET" and path == "/_firebox/events":
            exchange.operation = "EventStatistics"
            stats = await self._services.events.statistics()
            body = {name: dataclasses.asdict(s) for name, s in stats.items()}
            return responses.success(200, body, exchange.request_id, {})
        if method == "GET" and path == "/_firebox/stats":
            exchange.operation = "PlatformStatistics"
            return responses.success(200, dict(self._services.statistics()), exchange.request_id, {})
        if method == "GET" and (code := _CODE_PATH.fullmatch(path)):
            exchange.operation = "GetCodePackage"
            data = await self._services.registry.code_blob(code.group(1))
            return responses.success(200, data, exchange.request_id, {})

        target = headers.get("x-amz-target")
        if method == "POST" and target:
            model, op, labels = self._route_target(target)
            content_type = "application/x-amz-json-1.1"
        else:
            model = self._model
            matched = model.match(method, path, query)
            if matched is None:
                raise UnknownOperation(f"No Lambda API operation matches {method} {path}.")
            op, labels = matched
            content_type = None
        exchange.operation = op.name
        body = await self._read_body(scope, receive, headers, op.name)
        params = parse_input(model, op, labels, query, headers, body)
        handler = self._handlers.get(op.name)
        if handler is None:
            raise NotImplementedYet(f"Firebox does not implement the {op.name} operation yet.")
        host = headers.get("host", f"{scope['server'][0]}:{scope['server'][1]}")
        request = Request(op.name, params, headers, exchange.request_id, f"{scope.get('scheme', 'http')}://{host}")
        reply = await handler(self._services, request)
        status = op.status if reply.status is None else reply.status
        extra = reply.headers if content_type is None else {"Content-Type": content_type, **reply.headers}
        return responses.success(status, reply.body, exchange.request_id, extra)

    def _route_target(self, target: str) -> tuple[ServiceModel, Operation, dict[str, str]]:
        prefix, _, name = target.partition(".")
        load = JSON_TARGETS.get(prefix)
        op = load().operation(name) if load is not None else None
        if load is None or op is None:
            raise UnknownOperation(f"Unknown operation {target}.")
        return load(), op, {}

    async def _read_body(self, scope: Scope, receive: Any, headers: dict[str, str], operation: str) -> bytes:
        limit = self._max_request_bytes
        too_large = RequestEntityTooLarge(f"Request must be smaller than {limit} bytes for the {operation} operation")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)
