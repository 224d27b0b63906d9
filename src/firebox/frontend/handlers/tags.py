"""TagResource, UntagResource, ListTags (functions are the taggable resources so far)."""

from __future__ import annotations

from firebox.arns import FunctionRef, parse_function_arn
from firebox.frontend.api import Handler, Reply, Request, Services


def _resource(services: Services, request: Request) -> FunctionRef:
    return parse_function_arn(request.params["Resource"], services.scope)


async def tag_resource(services: Services, request: Request) -> Reply:
    await services.registry.tag(_resource(services, request), request.params["Tags"])
    return Reply(None)


async def untag_resource(services: Services, request: Request) -> Reply:
    await services.registry.untag(_resource(services, request), list(request.params["TagKeys"]))
    return Reply(None)


async def list_tags(services: Services, request: Request) -> Reply:
    return Reply({"Tags": dict(await services.registry.list_tags(_resource(services, request)))})


HANDLERS: dict[str, Handler] = {
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListTags": list_tags,
}
