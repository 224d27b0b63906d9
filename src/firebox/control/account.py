"""Function-wide settings that are not part of a version: reserved concurrency and tags,
and the account-wide view of them (GetAccountSettings)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from firebox.arns import FunctionRef, Scope
from firebox.control import records
from firebox.control.api import AccountSettings
from firebox.control.functions import load, save
from firebox.control.records import FUNCTION, VERSION
from firebox.errors import InvalidParameterValue
from firebox.settings import Limits
from firebox.store.api import Tx

MAX_TAGS = 50


def _unqualified(ref: FunctionRef, what: str) -> None:
    if ref.qualifier is not None:
        raise InvalidParameterValue(f"{what} is configured on the function, not on a version or alias: omit the qualifier.")


def reserved_total(tx: Tx, scope: Scope, *, excluding: str | None = None) -> int:
    return sum(
        doc.get("reserved_concurrency") or 0
        for name, doc in tx.scan(FUNCTION, scope.account_id)
        if name != excluding
    )


def put_reserved(tx: Tx, scope: Scope, limits: Limits, ref: FunctionRef, value: int) -> int:
    _unqualified(ref, "Reserved concurrency")
    record = load(tx, scope, ref.name)
    others = reserved_total(tx, scope, excluding=ref.name)
    if limits.account_concurrency - others - value < limits.min_unreserved_concurrency:
        raise InvalidParameterValue(
            "Specified ReservedConcurrentExecutions for function decreases account's "
            f"UnreservedConcurrentExecution below its minimum value of [{limits.min_unreserved_concurrency}]."
        )
    save(tx, scope, dataclasses.replace(record, reserved_concurrency=value))
    return value


def get_reserved(tx: Tx, scope: Scope, ref: FunctionRef) -> int | None:
    _unqualified(ref, "Reserved concurrency")
    return load(tx, scope, ref.name).reserved_concurrency


def delete_reserved(tx: Tx, scope: Scope, ref: FunctionRef) -> None:
    _unqualified(ref, "Reserved concurrency")
    record = load(tx, scope, ref.name)
    save(tx, scope, dataclasses.replace(record, reserved_concurrency=None))


def settings(tx: Tx, scope: Scope, limits: Limits) -> AccountSettings:
    total_code = 0
    count = 0
    for name, doc in tx.scan(FUNCTION, scope.account_id):
        count += 1
        total_code += doc["latest"]["code_size"]
        total_code += sum(v["code_size"] for _, v in tx.scan(VERSION, records.function_scope(scope.account_id, name)))
    return AccountSettings(
        concurrent_executions=limits.account_concurrency,
        unreserved_concurrent_executions=limits.account_concurrency - reserved_total(tx, scope),
        total_code_size=total_code,
        function_count=count,
    )


def tag(tx: Tx, scope: Scope, ref: FunctionRef, tags: Mapping[str, str]) -> None:
    _unqualified_tags(ref)
    record = load(tx, scope, ref.name)
    merged = {**record.tags, **tags}
    if len(merged) > MAX_TAGS:
        raise InvalidParameterValue(f"Number of tags exceeds resource tag limit of {MAX_TAGS}.")
    for key in tags:
        if key.lower().startswith("aws:"):
            raise InvalidParameterValue("Tag keys with the 'aws:' prefix are reserved for AWS use.")
    save(tx, scope, dataclasses.replace(record, tags=merged))


def untag(tx: Tx, scope: Scope, ref: FunctionRef, keys: list[str]) -> None:
    _unqualified_tags(ref)
    record = load(tx, scope, ref.name)
    save(tx, scope, dataclasses.replace(record, tags={k: v for k, v in record.tags.items() if k not in keys}))


def list_tags(tx: Tx, scope: Scope, ref: FunctionRef) -> dict[str, str]:
    _unqualified_tags(ref)
    return load(tx, scope, ref.name).tags


def _unqualified_tags(ref: FunctionRef) -> None:
    if ref.qualifier is not None:
        raise InvalidParameterValue("Tags are not supported for function versions or aliases: use the function's ARN.")
