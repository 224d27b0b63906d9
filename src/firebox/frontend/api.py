"""The frontend's contract: what an operation handler receives and returns.

The frontend owns the HTTP edge. A request is routed by the AWS service model (`model.py`),
parsed and validated into a dict of the operation's input members (`parse.py`), handed to the
operation's handler, and the handler's `Reply` (or raised `ApiError`) becomes the HTTP response
in exactly one place (`responses.py`). Handlers parse their input into the component's frozen
command objects and delegate; they never build error bodies and hold no business logic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from firebox.arns import Scope
from firebox.asyncinvoke.api import AsyncInvoker
from firebox.control.api import Registry
from firebox.invoker.api import Invoker
from firebox.logs.api import LogReader
from firebox.settings import Limits


@dataclass(frozen=True)
class Services:
    """What handlers may call: the components' contracts, built by `wiring`."""

    registry: Registry
    invoker: Invoker
    events: AsyncInvoker
    logs: LogReader
    scope: Scope
    limits: Limits
    # The components' `statistics()`, gathered by wiring (GET /_firebox/stats).
    statistics: Callable[[], Mapping[str, object]] = dict


class Request(NamedTuple):
    """Immutable, as a frozen dataclass would be, for less than half its cost to build (one per
    request: 9.3k -> 3.7k instructions)."""

    operation: str
    params: dict[str, Any]
    headers: dict[str, str]
    request_id: str  # also the invocation's request id, echoed in x-amzn-RequestId
    # scheme://host:port as the client reached us (for URLs we hand out, e.g. Code.Location).
    base_url: str


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Reply(NamedTuple):
    """A JSON document (dict/list), raw bytes, or nothing; status None = the model's status.

    A NamedTuple rather than a frozen dataclass: 7.8k -> 4.6k instructions to build. Its
    default headers are one shared read-only empty mapping (a tuple's defaults are shared)."""

    body: Any = None
    status: int | None = None
    headers: Mapping[str, str] = _NO_HEADERS


Handler = Callable[[Services, Request], Awaitable[Reply]]
