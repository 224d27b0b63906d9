"""CloudWatch Logs (JSON 1.1, `X-Amz-Target: Logs_20140328.*`): log groups, streams, retention.

CreateLogGroup, DeleteLogGroup, DescribeLogGroups, DescribeLogStreams, PutRetentionPolicy and
DeleteRetentionPolicy here; reading events is in `logs_events.py`. Every handler turns the
validated input into a `logs.api` command and delegates to the log store; the store raises the
AWS-shaped errors (`LogGroupNotFound`, `LogGroupExists`, `InvalidLogParameter`).

Not offered, said plainly (NotImplementedException): KMS keys and deletion protection on
CreateLogGroup; log group classes other than STANDARD are refused. Tags are accepted and not
stored (no tag operation of the Logs API is offered).
"""

from __future__ import annotations

from typing import Any

from firebox.arns import Scope
from firebox.frontend.api import Handler, Reply, Request, Services
from firebox.logs.api import (
    DescribeGroups,
    DescribeStreams,
    InvalidLogParameter,
    LogGroup,
    LogGroupNotFound,
    LogsNotImplemented,
    LogStream,
)


def group_arn(scope: Scope, name: str) -> str:
    return f"arn:aws:logs:{scope.region}:{scope.account_id}:log-group:{name}"


def group_name(services: Services, params: dict[str, Any]) -> str:
    """The group named by `logGroupName` or `logGroupIdentifier` (a name or an ARN)."""
    name, identifier = params.get("logGroupName"), params.get("logGroupIdentifier")
    if name and identifier:
        raise InvalidLogParameter("LogGroup name and LogGroup ARN are mutually exclusive parameters.")
    if name:
        return str(name)
    if not identifier:
        raise InvalidLogParameter("Either logGroupName or logGroupIdentifier must be specified.")
    return identifier_name(services.scope, str(identifier))


def identifier_name(scope: Scope, identifier: str) -> str:
    if not identifier.startswith("arn:"):
        return identifier
    parts = identifier.split(":", 6)
    if len(parts) < 7 or parts[2] != "logs" or parts[5] != "log-group":
        raise InvalidLogParameter(f"Invalid log group identifier {identifier!r}.")
    if (parts[3], parts[4]) != (scope.region, scope.account_id):
        raise LogGroupNotFound()
    return parts[6].removesuffix(":*")


def render_group(scope: Scope, group: LogGroup) -> dict[str, Any]:
    arn = group_arn(scope, group.name)
    body: dict[str, Any] = {
        "logGroupName": group.name,
        "creationTime": group.creation_ms,
        "metricFilterCount": 0,
        "arn": f"{arn}:*",
        "storedBytes": group.stored_bytes,
        "logGroupClass": "STANDARD",
        "logGroupArn": arn,
        "deletionProtectionEnabled": False,
    }
    if group.retention_days is not None:
        body["retentionInDays"] = group.retention_days
    return body


def render_stream(scope: Scope, group: str, stream: LogStream) -> dict[str, Any]:
    body: dict[str, Any] = {
        "logStreamName": stream.name,
        "creationTime": stream.creation_ms,
        "arn": f"{group_arn(scope, group)}:log-stream:{stream.name}",
        "storedBytes": stream.stored_bytes,
    }
    for key, value in (("firstEventTimestamp", stream.first_event_ms), ("lastEventTimestamp", stream.last_event_ms),
                       ("lastIngestionTime", stream.last_ingestion_ms)):
        if value is not None:
            body[key] = value
    return body


async def create_log_group(services: Services, request: Request) -> Reply:
    p = request.params
    if p.get("kmsKeyId"):
        raise LogsNotImplemented("Firebox does not encrypt log groups with KMS keys (kmsKeyId).")
    if p.get("deletionProtectionEnabled"):
        raise LogsNotImplemented("Firebox does not offer deletion protection for log groups yet.")
    if p.get("logGroupClass", "STANDARD") != "STANDARD":
        raise InvalidLogParameter("Firebox offers only the STANDARD log group class.")
    await services.logs.create_group(p["logGroupName"])
    return Reply(None)


async def delete_log_group(services: Services, request: Request) -> Reply:
    await services.logs.delete_group(request.params["logGroupName"])
    return Reply(None)


async def describe_log_groups(services: Services, request: Request) -> Reply:
    p = request.params
    identifiers = p.get("logGroupIdentifiers")
    chosen = [key for key in ("logGroupNamePrefix", "logGroupNamePattern", "logGroupIdentifiers") if p.get(key)]
    if len(chosen) > 1:
        raise InvalidLogParameter(f"{' and '.join(chosen)} are mutually exclusive parameters.")
    if p.get("logGroupClass", "STANDARD") != "STANDARD":
        return Reply({"logGroups": []})
    names = tuple(identifier_name(services.scope, i) for i in identifiers) if identifiers else None
    command = DescribeGroups(prefix=p.get("logGroupNamePrefix"), pattern=p.get("logGroupNamePattern"), names=names,
                             token=p.get("nextToken"), limit=p.get("limit", 50))
    page = await services.logs.describe_groups(command)
    body: dict[str, Any] = {"logGroups": [render_group(services.scope, g) for g in page.groups]}
    if page.next_token:
        body["nextToken"] = page.next_token
    return Reply(body)


async def describe_log_streams(services: Services, request: Request) -> Reply:
    p = request.params
    group = group_name(services, p)
    command = DescribeStreams(group, prefix=p.get("logStreamNamePrefix"), order_by=p.get("orderBy", "LogStreamName"),
                              descending=bool(p.get("descending")), token=p.get("nextToken"), limit=p.get("limit", 50))
    page = await services.logs.describe_streams(command)
    body: dict[str, Any] = {"logStreams": [render_stream(services.scope, group, s) for s in page.streams]}
    if page.next_token:
        body["nextToken"] = page.next_token
    return Reply(body)


async def put_retention_policy(services: Services, request: Request) -> Reply:
    await services.logs.put_retention(request.params["logGroupName"], request.params["retentionInDays"])
    return Reply(None)


async def delete_retention_policy(services: Services, request: Request) -> Reply:
    await services.logs.put_retention(request.params["logGroupName"], None)
    return Reply(None)


HANDLERS: dict[str, Handler] = {
    "CreateLogGroup": create_log_group,
    "DeleteLogGroup": delete_log_group,
    "DescribeLogGroups": describe_log_groups,
    "DescribeLogStreams": describe_log_streams,
    "PutRetentionPolicy": put_retention_policy,
    "DeleteRetentionPolicy": delete_retention_policy,
}
