"""Put/Get/Update/Delete/List FunctionEventInvokeConfig(s)."""

from __future__ import annotations

from typing import Any

from firebox.arns import LATEST
from firebox.control.api import EventInvokeConfig
from firebox.frontend.api import Handler, Reply, Request, Services
from firebox.frontend.handlers.common import function_ref, page_args, with_marker


def _command(params: dict[str, Any]) -> EventInvokeConfig:
    destinations = params.get("DestinationConfig") or {}
    return EventInvokeConfig(
        maximum_retry_attempts=params.get("MaximumRetryAttempts"),
        maximum_event_age_s=params.get("MaximumEventAgeInSeconds"),
        on_success=(destinations.get("OnSuccess") or {}).get("Destination"),
        on_failure=(destinations.get("OnFailure") or {}).get("Destination"),
    )


def render(services: Services, name: str, config: EventInvokeConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "LastModified": config.last_modified,
        "FunctionArn": services.scope.function_arn(name, config.qualifier or LATEST),
        "DestinationConfig": {
            "OnSuccess": {"Destination": config.on_success} if config.on_success else {},
            "OnFailure": {"Destination": config.on_failure} if config.on_failure else {},
        },
    }
    if config.maximum_retry_attempts is not None:
        out["MaximumRetryAttempts"] = config.maximum_retry_attempts
    if config.maximum_event_age_s is not None:
        out["MaximumEventAgeInSeconds"] = config.maximum_event_age_s
    return out


async def put_config(services: Services, request: Request) -> Reply:
    ref = function_ref(services, request)
    config = await services.registry.put_event_invoke_config(ref, _command(request.params), merge=False)
    return Reply(render(services, ref.name, config))


async def update_config(services: Services, request: Request) -> Reply:
    ref = function_ref(services, request)
    config = await services.registry.put_event_invoke_config(ref, _command(request.params), merge=True)
    return Reply(render(services, ref.name, config))


async def get_config(services: Services, request: Request) -> Reply:
    ref = function_ref(services, request)
    return Reply(render(services, ref.name, await services.registry.get_event_invoke_config(ref)))


async def delete_config(services: Services, request: Request) -> Reply:
    await services.registry.delete_event_invoke_config(function_ref(services, request))
    return Reply(None)


async def list_configs(services: Services, request: Request) -> Reply:
    ref = function_ref(services, request, qualifier=False)
    args = page_args(request.params)
    args["max_items"] = min(args["max_items"], 50)
    page = await services.registry.list_event_invoke_configs(ref, **args)
    listed = [render(services, ref.name, c) for c in page.items]  # type: ignore[arg-type]
    return Reply(with_marker({"FunctionEventInvokeConfigs": listed}, page.next_marker))


HANDLERS: dict[str, Handler] = {
    "PutFunctionEventInvokeConfig": put_config,
    "UpdateFunctionEventInvokeConfig": update_config,
    "GetFunctionEventInvokeConfig": get_config,
    "DeleteFunctionEventInvokeConfig": delete_config,
    "ListFunctionEventInvokeConfigs": list_configs,
}
