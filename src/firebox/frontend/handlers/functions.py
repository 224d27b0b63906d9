"""CreateFunction, GetFunction(Configuration), ListFunctions, UpdateFunctionCode,
UpdateFunctionConfiguration, DeleteFunction."""

from __future__ import annotations

from typing import Any

from firebox.arns import parse_function_name
from firebox.control.api import CodeInput, CreateFunction, LoggingConfig, UpdateCode, UpdateConfiguration
from firebox.errors import InvalidParameterValue, ValidationError
from firebox.frontend import render
from firebox.frontend.api import Handler, Reply, Request, Services
from firebox.frontend.handlers.common import function_ref, page_args, with_marker

MAX_NAME_LENGTH = 64


def _unsupported(params: dict[str, Any]) -> tuple[str, ...]:
    """Parameters whose meaning Firebox cannot honour yet: refused by name, never ignored."""
    names = []
    vpc = params.get("VpcConfig") or {}
    if vpc.get("SubnetIds") or vpc.get("SecurityGroupIds"):
        names.append("VpcConfig")
    for key in ("FileSystemConfigs", "ImageConfig", "CodeSigningConfigArn", "CapacityProviderConfig",
                "DurableConfig", "TenancyConfig", "PublishTo"):
        if params.get(key):
            names.append(key)
    if (params.get("SnapStart") or {}).get("ApplyOn", "None") != "None":
        names.append("SnapStart")
    return tuple(names)


def _code(params: dict[str, Any]) -> CodeInput:
    return CodeInput(
        zip_file=params.get("ZipFile"),
        s3_bucket=params.get("S3Bucket"),
        s3_key=params.get("S3Key"),
        s3_object_version=params.get("S3ObjectVersion"),
        image_uri=params.get("ImageUri"),
    )


def _logging(params: dict[str, Any]) -> dict[str, Any]:
    given = params.get("LoggingConfig") or {}
    keys = {"LogFormat": "log_format", "LogGroup": "log_group",
            "ApplicationLogLevel": "application_log_level", "SystemLogLevel": "system_log_level"}
    return {field: given[key] for key, field in keys.items() if key in given}


async def create_function(services: Services, request: Request) -> Reply:
    p = request.params
    ref = parse_function_name(p["FunctionName"], services.scope)
    if ref.qualifier is not None:
        raise InvalidParameterValue("A function name in CreateFunction cannot carry a qualifier.")
    if len(ref.name) > MAX_NAME_LENGTH:
        raise ValidationError.of([
            f"Value '{ref.name}' at 'functionName' failed to satisfy constraint: "
            f"Member must have length less than or equal to {MAX_NAME_LENGTH}"
        ])
    cmd = CreateFunction(
        name=ref.name,
        role=p["Role"],
        code=_code(p["Code"]),
        runtime=p.get("Runtime"),
        handler=p.get("Handler"),
        description=p.get("Description", ""),
        timeout=p.get("Timeout", 3),
        memory_size=p.get("MemorySize", 128),
        ephemeral_storage=(p.get("EphemeralStorage") or {}).get("Size", 512),
        environment=(p["Environment"].get("Variables") or {}) if "Environment" in p else None,
        architectures=tuple(p.get("Architectures") or ("x86_64",)),
        package_type=p.get("PackageType", "Zip"),
        tracing_mode=(p.get("TracingConfig") or {}).get("Mode", "PassThrough"),
        logging=LoggingConfig(**_logging(p)),
        dead_letter_target_arn=(p.get("DeadLetterConfig") or {}).get("TargetArn") or None,
        kms_key_arn=p.get("KMSKeyArn") or None,
        tags=p.get("Tags") or {},
        publish=p.get("Publish", False),
        layers=tuple(p.get("Layers") or ()),
        unsupported=_unsupported(p),
    )
    created = await services.registry.create_function(cmd)
    qualifier = created.version if cmd.publish else None
    return Reply(render.function_configuration(created, services.scope, qualifier=qualifier))


async def get_function(services: Services, request: Request) -> Reply:
    ref = function_ref(services, request)
    details = await services.registry.get_function(ref)
    body: dict[str, Any] = {
        "Configuration": render.function_configuration(details.config, services.scope, qualifier=ref.qualifier),
        "Code": {
            "RepositoryType": "S3",
            "Location": f"{request.base_url}/_firebox/code/{details.config.code_sha256_hex}",
        },
    }
    if details.tags:
        body["Tags"] = dict(details.tags)
    if details.reserved_concurrency is not None:
        body["Concurrency"] = {"ReservedConcurrentExecutions": details.reserved_concurrency}
    return Reply(body)


async def get_function_configuration(services: Services, request: Request) -> Reply:
    ref = function_ref(services, request)
    config, _ = await services.registry.get_configuration(ref)
    return Reply(render.function_configuration(config, services.scope, qualifier=ref.qualifier))


async def list_functions(services: Services, request: Request) -> Reply:
    all_versions = request.params.get("FunctionVersion") == "ALL"
    page = await services.registry.list_functions(all_versions=all_versions, **page_args(request.params))
    listed = [
        render.function_configuration(v, services.scope, qualifier=v.version if all_versions else None, with_state=False)
        for v in page.items
    ]
    return Reply(with_marker({"Functions": listed}, page.next_marker))


async def update_function_code(services: Services, request: Request) -> Reply:
    p = request.params
    cmd = UpdateCode(
        ref=function_ref(services, request, qualifier=False),
        code=_code(p),
        architectures=tuple(p["Architectures"]) if p.get("Architectures") else None,
        publish=p.get("Publish", False),
        dry_run=p.get("DryRun", False),
        revision_id=p.get("RevisionId"),
    )
    updated = await services.registry.update_code(cmd)
    qualifier = updated.version if cmd.publish and not cmd.dry_run else None
    return Reply(render.function_configuration(updated, services.scope, qualifier=qualifier))


_CONFIG_FIELDS = {
    "Role": "role", "Handler": "handler", "Description": "description", "Timeout": "timeout",
    "MemorySize": "memory_size", "Runtime": "runtime", "KMSKeyArn": "kms_key_arn",
}


async def update_function_configuration(services: Services, request: Request) -> Reply:
    p = request.params
    changes: dict[str, object] = {field: p[key] for key, field in _CONFIG_FIELDS.items() if key in p}
    if "Environment" in p:
        changes["environment"] = p["Environment"].get("Variables") or {}
    if "TracingConfig" in p:
        changes["tracing_mode"] = p["TracingConfig"].get("Mode", "PassThrough")
    if "EphemeralStorage" in p:
        changes["ephemeral_storage"] = p["EphemeralStorage"]["Size"]
    if "DeadLetterConfig" in p:
        changes["dead_letter_target_arn"] = p["DeadLetterConfig"].get("TargetArn") or None
    if "LoggingConfig" in p:
        changes["logging"] = _logging(p)  # merged into the current config by the registry
    unsupported = _unsupported(p) + (("Layers",) if p.get("Layers") else ())
    cmd = UpdateConfiguration(
        ref=function_ref(services, request, qualifier=False),
        changes=changes,
        revision_id=p.get("RevisionId"),
        unsupported=unsupported,
    )
    updated = await services.registry.update_configuration(cmd)
    return Reply(render.function_configuration(updated, services.scope))


async def delete_function(services: Services, request: Request) -> Reply:
    await services.registry.delete_function(function_ref(services, request))
    return Reply(None)


HANDLERS: dict[str, Handler] = {
    "CreateFunction": create_function,
    "GetFunction": get_function,
    "GetFunctionConfiguration": get_function_configuration,
    "ListFunctions": list_functions,
    "UpdateFunctionCode": update_function_code,
    "UpdateFunctionConfiguration": update_function_configuration,
    "DeleteFunction": delete_function,
}
