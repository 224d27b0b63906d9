"""PublishVersion, ListVersionsByFunction."""

from __future__ import annotations

from firebox.frontend import render
from firebox.frontend.api import Handler, Reply, Request, Services
from firebox.frontend.handlers.common import function_ref, page_args, with_marker


async def publish_version(services: Services, request: Request) -> Reply:
    p = request.params
    version = await services.registry.publish_version(
        function_ref(services, request, qualifier=False),
        code_sha256=p.get("CodeSha256"),
        description=p.get("Description"),
        revision_id=p.get("RevisionId"),
    )
    return Reply(render.function_configuration(version, services.scope, qualifier=version.version))


async def list_versions_by_function(services: Services, request: Request) -> Reply:
    page = await services.registry.list_versions(
        function_ref(services, request, qualifier=False), **page_args(request.params)
    )
    listed = [render.function_configuration(v, services.scope, qualifier=v.version, with_state=False) for v in page.items]
    return Reply(with_marker({"Versions": listed}, page.next_marker))


HANDLERS: dict[str, Handler] = {
    "PublishVersion": publish_version,
    "ListVersionsByFunction": list_versions_by_function,
}
