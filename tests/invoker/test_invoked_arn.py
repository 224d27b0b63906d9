"""The ARN an invocation is invoked as (the runtime's `invoked_function_arn`) names the function
as the caller named it, qualifier included; LocalInvoker remembers it per FunctionRef, so the
same ref gives the same ARN however many times, and refs never share one."""

from __future__ import annotations

import asyncio
from typing import Any

from firebox.arns import FunctionRef, Scope
from firebox.counter.local import LocalCounter
from firebox.invoker.api import InvocationType, InvokeRequest
from firebox.invoker.invoker import LocalInvoker
from firebox.worker.api import InvokeOutcome


class Config:
    name, version, revision_id, state = "f", "$LATEST", "rev-1", None


class Details:
    config = Config
    reserved_concurrency = None


class Registry:
    async def get_function(self, ref: FunctionRef) -> Any:
        return Details


class Workers:
    def __init__(self) -> None:
        self.arns: list[str] = []

    async def lease(self, spec: Any) -> str:
        return "lease"

    async def invoke(self, lease: Any, *, request_id: str, payload: bytes, invoked_arn: str,
                     client_context: str | None) -> InvokeOutcome:
        self.arns.append(invoked_arn)
        return InvokeOutcome(b"1", None, True, 1.0, b"")

    async def release(self, lease: Any) -> None:
        pass


def test_each_ref_is_invoked_as_its_own_arn_every_time() -> None:
    scope = Scope("000000000000", "us-east-1")
    workers = Workers()
    invoker = LocalInvoker(Registry(), LocalCounter(10), workers, scope)  # type: ignore[arg-type]
    invoker._specs[("f", "$LATEST", "rev-1")] = object()  # type: ignore[assignment]
    refs = [FunctionRef("f"), FunctionRef("f", "$LATEST"), FunctionRef("f", "7"), FunctionRef("g")]

    async def main() -> None:
        for _ in range(3):
            for ref in refs:
                await invoker.invoke(InvokeRequest(ref, b"{}", "r", InvocationType.REQUEST_RESPONSE))

    asyncio.run(main())
    expected = [scope.function_arn(ref.name, ref.qualifier) for ref in refs]
    assert expected[:3] == ["arn:aws:lambda:us-east-1:000000000000:function:f",
                            "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST",
                            "arn:aws:lambda:us-east-1:000000000000:function:f:7"]
    assert workers.arns == expected * 3
