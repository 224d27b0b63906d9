"""Checks the service model cannot express: Lambda's semantic rules, with AWS's messages.

The frontend has already enforced types, patterns, lengths, enums and the model's ranges; what
is left is what AWS checks in its service code (the 900 s timeout, the 4 KB environment, reserved
variable names, runtimes this host can run...).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from firebox.errors import InvalidParameterValue, ValidationError

MAX_TIMEOUT_S = 900
MAX_MEMORY_MB = 10240

# Runtimes AWS no longer accepts for creating or updating functions.
DEPRECATED_RUNTIMES = frozenset(
    {
        "nodejs", "nodejs4.3", "nodejs6.10", "nodejs8.10", "nodejs10.x", "nodejs12.x", "nodejs14.x",
        "nodejs16.x", "nodejs4.3-edge", "python2.7", "python3.6", "python3.7", "python3.8",
        "dotnetcore1.0", "dotnetcore2.0", "dotnetcore2.1", "dotnetcore3.1", "dotnet6", "java8",
        "go1.x", "ruby2.5", "ruby2.7", "provided",
    }
)

# Variables Lambda sets itself; a function may not override them.
RESERVED_ENV = frozenset(
    {
        "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
    }
)


def check_runtime(runtime: str | None, available: Iterable[str]) -> None:
    if runtime is None:
        return
    if runtime in DEPRECATED_RUNTIMES:
        raise InvalidParameterValue(
            f"The runtime parameter of {runtime} is no longer supported for creating or updating AWS "
            "Lambda functions. We recommend you use a supported runtime while creating or updating functions."
        )
    runnable = sorted(available)
    if runtime not in runnable:
        raise InvalidParameterValue(
            f"The runtime parameter of {runtime} is not supported by this Firebox host, which can run: "
            f"{', '.join(runnable)}."
        )


def check_package(package_type: str, runtime: str | None, handler: str | None) -> None:
    if package_type == "Image":
        raise InvalidParameterValue(
            "PackageType Image is not supported by Firebox yet: deploy a .zip package (PackageType Zip)."
        )
    if runtime is None or not handler:
        raise InvalidParameterValue(
            "Runtime and Handler are mandatory parameters for functions created with deployment packages."
        )


def check_limits(*, timeout: int | None, memory_size: int | None) -> None:
    problems = []
    if timeout is not None and timeout > MAX_TIMEOUT_S:
        problems.append(
            f"Value '{timeout}' at 'timeout' failed to satisfy constraint: "
            f"Member must have value less than or equal to {MAX_TIMEOUT_S}"
        )
    if memory_size is not None and memory_size > MAX_MEMORY_MB:
        problems.append(
            f"Value '{memory_size}' at 'memorySize' failed to satisfy constraint: "
            f"Member must have value less than or equal to {MAX_MEMORY_MB}"
        )
    if problems:
        raise ValidationError.of(problems)


def check_environment(variables: Mapping[str, str] | None, max_bytes: int) -> None:
    if not variables:
        return
    reserved = sorted(k for k in variables if k in RESERVED_ENV)
    if reserved:
        raise InvalidParameterValue(
            "Lambda was unable to configure your environment variables because the environment variables "
            "you have provided contains reserved keys that are currently not supported for modification. "
            f"Reserved keys used in this request: {', '.join(reserved)}"
        )
    # AWS measures the variables as compact JSON.
    measured = json.dumps(dict(variables), separators=(",", ":"), ensure_ascii=False)
    if len(measured.encode()) > max_bytes:
        raise InvalidParameterValue(
            "Lambda was unable to configure your environment variables because the environment variables "
            f"you have provided exceeded the {max_bytes // 1024}KB limit. String measured: {measured}"
        )


def check_architectures(architectures: tuple[str, ...], host: str) -> None:
    for arch in architectures:
        if arch != host:
            raise InvalidParameterValue(
                f"Architecture {arch} is not supported by this Firebox host, which runs {host} code only."
            )


def check_unsupported(names: Iterable[str]) -> None:
    given = sorted(names)
    if given:
        raise InvalidParameterValue(
            f"Firebox does not support {', '.join(given)} yet; remove {'it' if len(given) == 1 else 'them'} "
            "from the request."
        )


def check_weights(version: str, weights: Mapping[str, float]) -> None:
    if not weights:
        return
    if len(weights) > 1:
        raise InvalidParameterValue("Number of items in AdditionalVersionWeights cannot be greater than 1")
    for extra, weight in weights.items():
        if not 0.0 <= weight <= 1.0:
            raise ValidationError.of(
                [f"Value '{weight}' at 'routingConfig.additionalVersionWeights' failed to satisfy constraint: "
                 "Map value must satisfy constraint: [Member must have value less than or equal to 1.0, "
                 "Member must have value greater than or equal to 0.0]"]
            )
        if extra == version:
            raise InvalidParameterValue(
                f"Invalid function version {extra}. Function version {extra} is already included in routing configuration."
            )
        if version == "$LATEST" or extra == "$LATEST":
            raise InvalidParameterValue("$LATEST is not supported for an alias pointing to more than 1 version")
