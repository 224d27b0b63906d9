"""The registry's values in Lambda's wire shapes (FunctionConfiguration, AliasConfiguration)."""

from __future__ import annotations

from typing import Any

from firebox.arns import Scope
from firebox.control.api import Alias, FunctionVersion


def function_configuration(
    v: FunctionVersion, scope: Scope, *, qualifier: str | None = None, with_state: bool = True
) -> dict[str, Any]:
    """`qualifier` is what the ARN ends with (None: the unqualified ARN). ListFunctions leaves
    the state fields out (`with_state=False`), as AWS does."""
    log_group = v.logging.log_group or f"/aws/lambda/{v.name}"
    logging_config: dict[str, Any] = {"LogFormat": v.logging.log_format, "LogGroup": log_group}
    if v.logging.log_format == "JSON":
        logging_config["ApplicationLogLevel"] = v.logging.application_log_level or "INFO"
        logging_config["SystemLogLevel"] = v.logging.system_log_level or "INFO"
    out: dict[str, Any] = {
        "FunctionName": v.name,
        "FunctionArn": scope.function_arn(v.name, qualifier),
        "Runtime": v.runtime,
        "Role": v.role,
        "Handler": v.handler,
        "CodeSize": v.code_size,
        "Description": v.description,
        "Timeout": v.timeout,
        "MemorySize": v.memory_size,
        "LastModified": v.last_modified,
        "CodeSha256": v.code_sha256,
        "Version": v.version,
        "TracingConfig": {"Mode": v.tracing_mode},
        "RevisionId": v.revision_id,
        "PackageType": v.package_type,
        "Architectures": list(v.architectures),
        "EphemeralStorage": {"Size": v.ephemeral_storage},
        "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
        "LoggingConfig": logging_config,
    }
    if v.environment is not None:
        out["Environment"] = {"Variables": dict(v.environment)}
    if v.dead_letter_target_arn:
        out["DeadLetterConfig"] = {"TargetArn": v.dead_letter_target_arn}
    if v.kms_key_arn:
        out["KMSKeyArn"] = v.kms_key_arn
    if with_state:
        out["State"] = v.state.value
        for key, value in (
            ("StateReason", v.state_reason),
            ("StateReasonCode", v.state_reason_code),
            ("LastUpdateStatus", v.last_update_status.value if v.last_update_status else None),
            ("LastUpdateStatusReason", v.last_update_status_reason),
            ("LastUpdateStatusReasonCode", v.last_update_status_reason_code),
        ):
            if value is not None:
                out[key] = value
    return {k: val for k, val in out.items() if val is not None}


def alias_configuration(a: Alias, scope: Scope) -> dict[str, Any]:
    out: dict[str, Any] = {
        "AliasArn": scope.function_arn(a.function_name, a.name),
        "Name": a.name,
        "FunctionVersion": a.function_version,
        "Description": a.description,
        "RevisionId": a.revision_id,
    }
    if a.additional_weights:
        out["RoutingConfig"] = {"AdditionalVersionWeights": dict(a.additional_weights)}
    return out
