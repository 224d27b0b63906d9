"""Small helpers shared by handlers: naming the function a request is about, pagination."""

from __future__ import annotations

from typing import Any

from firebox.arns import FunctionRef, Scope, parse_function_name
from firebox.frontend.api import Request, Services

DEFAULT_MAX_ITEMS = 50
# Lambda's list operations return at most 50 items per page, whatever MaxItems asks for.
PAGE_CAP = 50


# FunctionName values already parsed, with the scope they were parsed in: a warm Invoke names
# the same functions over and over, and a FunctionRef is immutable (~5k instructions less).
_REFS: dict[str, tuple[Scope, FunctionRef]] = {}
_REFS_KEPT = 4096


def function_ref(services: Services, request: Request, *, qualifier: bool = True) -> FunctionRef:
    """The FunctionName label (name, partial or full ARN) merged with `?Qualifier=`."""
    params = request.params
    name, scope = params["FunctionName"], services.scope
    known = _REFS.get(name)
    if known is not None and known[0] is scope:
        ref = known[1]
    else:
        ref = parse_function_name(name, scope)  # raises for a name it refuses: never remembered
        if len(_REFS) >= _REFS_KEPT:
            _REFS.clear()
        _REFS[name] = (scope, ref)
    extra = params.get("Qualifier") if qualifier else None
    return ref if extra is None else ref.with_qualifier(extra)  # with_qualifier(None) is ref


def page_args(params: dict[str, Any]) -> dict[str, Any]:
    max_items = min(params.get("MaxItems") or DEFAULT_MAX_ITEMS, PAGE_CAP)
    return {"marker": params.get("Marker") or None, "max_items": max_items}


def with_marker(body: dict[str, Any], next_marker: str | None) -> dict[str, Any]:
    if next_marker is not None:
        body["NextMarker"] = next_marker
    return body
