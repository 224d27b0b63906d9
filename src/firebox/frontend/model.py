"""The AWS service model, loaded from botocore, as a route table.

botocore ships the machine-readable description of every AWS API (operations, HTTP bindings,
shapes with their patterns, lengths, ranges and enums). Using it at the edge means a request is
routed and validated exactly as boto3 and the AWS CLI expect, and that an operation Firebox does
not offer yet is still recognised and answered with a clear error instead of a 404.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

from botocore.loaders import Loader

Shape = dict[str, Any]

_LABEL = re.compile(r"\{([A-Za-z0-9_]+)(\+?)\}")


@dataclass(frozen=True)
class Operation:
    name: str
    method: str
    path_regex: re.Pattern[str]
    # Query parameters fixed by the request URI (`?List=ALL`): the route matches only with them.
    fixed_query: tuple[tuple[str, str], ...]
    input_shape: str | None
    status: int
    static_segments: int


_ROUTES_KEPT = 10_000
# (method, path), or (method, path, the values of the query keys routes fix) when there is a query.
_RouteKey = tuple[str, str] | tuple[str, str, tuple[str | None, ...]]


@dataclass(frozen=True)
class ServiceModel:
    name: str
    shapes: dict[str, Shape]
    operations: tuple[Operation, ...]
    # match()'s answers by `_RouteKey`: a warm invoke is matched by dictionary lookup, not by
    # trying the operations' patterns in turn.
    _routes: dict[_RouteKey, tuple[Operation, dict[str, str]] | None] = field(
        default_factory=dict, compare=False, repr=False)

    def shape(self, name: str) -> Shape:
        return self.shapes[name]

    def operation(self, name: str) -> Operation | None:
        """By name, for JSON-protocol services routed by `X-Amz-Target` rather than by path."""
        return next((op for op in self.operations if op.name == name), None)

    def match(self, method: str, raw_path: str, query: dict[str, list[str]]) -> tuple[Operation, dict[str, str]] | None:
        """The operation bound to `method` + `raw_path` and its (still percent-encoded) labels."""
        key: _RouteKey
        if query:
            key = (method, raw_path, tuple(query[k][0] if k in query else None for k in self._fixed_keys))
        else:  # a warm invoke has no query string: no values to gather (5k instructions less)
            key = (method, raw_path)
        if key in self._routes:
            found = self._routes[key]
        else:
            if len(self._routes) >= _ROUTES_KEPT:
                self._routes.clear()
            found = self._routes[key] = self._match(method, raw_path, query)
        return None if found is None else (found[0], dict(found[1]))  # the labels are the caller's

    @cached_property
    def _fixed_keys(self) -> tuple[str, ...]:
        return tuple(sorted({k for op in self.operations for k, _ in op.fixed_query}))

    def _match(self, method: str, raw_path: str, query: dict[str, list[str]]) -> tuple[Operation, dict[str, str]] | None:
        path = raw_path.rstrip("/") or "/"
        for op in self.operations:
            if op.method != method:
                continue
            found = op.path_regex.fullmatch(path)
            if found and all(query.get(k, [None])[0] == v for k, v in op.fixed_query):
                return op, found.groupdict()
        return None

    def path_exists(self, raw_path: str) -> bool:
        path = raw_path.rstrip("/") or "/"
        return any(op.path_regex.fullmatch(path) for op in self.operations)


def _compile(name: str, http: dict[str, Any], input_shape: str | None) -> Operation:
    uri, _, fixed = http["requestUri"].partition("?")
    uri = uri.rstrip("/") or "/"
    pattern = ""
    position = 0
    for label in _LABEL.finditer(uri):
        pattern += re.escape(uri[position : label.start()])
        greedy = label.group(2) == "+"
        pattern += f"(?P<{label.group(1)}>{'.+' if greedy else '[^/]+'})"
        position = label.end()
    pattern += re.escape(uri[position:])
    fixed_query = tuple(
        (k, v) for k, _, v in (pair.partition("=") for pair in fixed.split("&") if pair)
    )
    static = len([s for s in uri.split("/") if s and not s.startswith("{")])
    return Operation(
        name=name,
        method=http["method"],
        path_regex=re.compile(pattern),
        fixed_query=fixed_query,
        input_shape=input_shape,
        status=int(http.get("responseCode", 200)),
        static_segments=static,
    )


# Limits AWS enforces in its service code but the published model leaves wider; applied as if the
# model said them, so they are reported with the other constraint problems of a request.
_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "lambda": {"MemorySize": {"max": 10240}, "Timeout": {"max": 900}},
}


@cache
def load(service: str, api_version: str) -> ServiceModel:
    raw = Loader().load_service_model(service, "service-2", api_version)
    for shape, constraints in _OVERRIDES.get(service, {}).items():
        raw["shapes"][shape] = {**raw["shapes"][shape], **constraints}
    operations = [
        _compile(name, op["http"], op.get("input", {}).get("shape"))
        for name, op in raw["operations"].items()
    ]
    # Most specific first: fixed query constraints, then more static path segments.
    operations.sort(key=lambda op: (-len(op.fixed_query), -op.static_segments))
    return ServiceModel(name=service, shapes=raw["shapes"], operations=tuple(operations))


def lambda_model() -> ServiceModel:
    return load("lambda", "2015-03-31")


def logs_model() -> ServiceModel:
    return load("logs", "2014-03-28")


# JSON 1.1 services are routed by the `X-Amz-Target: <prefix>.<Operation>` header.
JSON_TARGETS = {"Logs_20140328": logs_model}
