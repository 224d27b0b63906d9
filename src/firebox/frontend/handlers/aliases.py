"""CreateAlias, GetAlias, UpdateAlias, DeleteAlias, ListAliases."""

from __future__ import annotations

from typing import Any

from firebox.frontend import render
from firebox.frontend.api import Handler, Reply, Request, Services
from firebox.frontend.handlers.common import function_ref, page_args, with_marker


def _weights(params: dict[str, Any]) -> dict[str, float] | None:
    if "RoutingConfig" not in params:
        return None
    return dict(params["RoutingConfig"].get("AdditionalVersionWeights") or {})


async def create_alias(services: Services, request: Request) -> Reply:
    p = request.params
    alias = await services.registry.create_alias(
        function_ref(services, request, qualifier=False), p["Name"], p["FunctionVersion"],
        p.get("Description", ""), _weights(p),
    )
    return Reply(render.alias_configuration(alias, services.scope))


async def get_alias(services: Services, request: Request) -> Reply:
    alias = await services.registry.get_alias(function_ref(services, request, qualifier=False), request.params["Name"])
    return Reply(render.alias_configuration(alias, services.scope))


async def update_alias(services: Services, request: Request) -> Reply:
    p = request.params
    alias = await services.registry.update_alias(
        function_ref(services, request, qualifier=False), p["Name"],
        version=p.get("FunctionVersion"), description=p.get("Description"), weights=_weights(p),
        revision_id=p.get("RevisionId"),
    )
    return Reply(render.alias_configuration(alias, services.scope))


async def delete_alias(services: Services, request: Request) -> Reply:
    await services.registry.delete_alias(function_ref(services, request, qualifier=False), request.params["Name"])
    return Reply(None)


async def list_aliases(services: Services, request: Request) -> Reply:
    page = await services.registry.list_aliases(
        function_ref(services, request, qualifier=False),
        version=request.params.get("FunctionVersion"),
        **page_args(request.params),
    )
    listed = [render.alias_configuration(a, services.scope) for a in page.items]
    return Reply(with_marker({"Aliases": listed}, page.next_marker))


HANDLERS: dict[str, Handler] = {
    "CreateAlias": create_alias,
    "GetAlias": get_alias,
    "UpdateAlias": update_alias,
    "DeleteAlias": delete_alias,
    "ListAliases": list_aliases,
}
