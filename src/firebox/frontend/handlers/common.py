"""Small helpers shared by handlers: naming the function a request is about, pagination."""

from __future__ import annotations

from typing import Any

from firebox.arns import FunctionRef, parse_function_name
from firebox.frontend.api import Request, Services

DEFAULT_MAX_ITEMS = 50
# Lambda's list operations return at most 50 items per page, whatever MaxItems asks for.
PAGE_CAP = 50


def function_ref(services: Services, request: Request, *, qualifier: bool = True) -> FunctionRef:
    """The FunctionName label (name, partial or full ARN) merged with `?Qualifier=`."""
    ref = parse_function_name(request.params["FunctionName"], services.scope)
    return ref.with_qualifier(request.params.get("Qualifier")) if qualifier else ref


def page_args(params: dict[str, Any]) -> dict[str, Any]:
    max_items = min(params.get("MaxItems") or DEFAULT_MAX_ITEMS, PAGE_CAP)
    return {"marker": params.get("Marker") or None, "max_items": max_items}


def with_marker(body: dict[str, Any], next_marker: str | None) -> dict[str, Any]:
    if next_marker is not None:
        body["NextMarker"] = next_marker
    return body
