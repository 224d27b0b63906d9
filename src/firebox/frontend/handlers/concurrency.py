"""Put/Get/DeleteFunctionConcurrency and GetAccountSettings."""

from __future__ import annotations

from firebox.frontend.api import Handler, Reply, Request, Services
from firebox.frontend.handlers.common import function_ref


async def put_function_concurrency(services: Services, request: Request) -> Reply:
    value = await services.registry.put_reserved_concurrency(
        function_ref(services, request, qualifier=False), request.params["ReservedConcurrentExecutions"]
    )
    return Reply({"ReservedConcurrentExecutions": value})


async def get_function_concurrency(services: Services, request: Request) -> Reply:
    value = await services.registry.get_reserved_concurrency(function_ref(services, request, qualifier=False))
    return Reply({} if value is None else {"ReservedConcurrentExecutions": value})


async def delete_function_concurrency(services: Services, request: Request) -> Reply:
    await services.registry.delete_reserved_concurrency(function_ref(services, request, qualifier=False))
    return Reply(None)


async def get_account_settings(services: Services, request: Request) -> Reply:
    s = await services.registry.account_settings()
    limits = services.limits
    return Reply({
        "AccountLimit": {
            "TotalCodeSize": limits.total_code_size,
            "CodeSizeUnzipped": limits.max_unzipped_bytes,
            "CodeSizeZipped": limits.max_zip_bytes,
            "ConcurrentExecutions": s.concurrent_executions,
            "UnreservedConcurrentExecutions": s.unreserved_concurrent_executions,
        },
        "AccountUsage": {"TotalCodeSize": s.total_code_size, "FunctionCount": s.function_count},
    })


HANDLERS: dict[str, Handler] = {
    "PutFunctionConcurrency": put_function_concurrency,
    "GetFunctionConcurrency": get_function_concurrency,
    "DeleteFunctionConcurrency": delete_function_concurrency,
    "GetAccountSettings": get_account_settings,
}
