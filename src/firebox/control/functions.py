"""Functions and their `$LATEST`: the units of work behind Create/Get/Update/Delete/List.

Every function here runs inside one store transaction (`Tx`), so it sees a consistent registry
and its writes land together or not at all. Validation happens before the first write.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable

from firebox.arns import LATEST, FunctionRef, Scope
from firebox.control import lifecycle, records
from firebox.control.api import (
    CreateFunction,
    FunctionDetails,
    FunctionVersion,
    Page,
    UpdateCode,
    UpdateConfiguration,
)
from firebox.control.preparation import PrepareFailure
from firebox.control.records import ALIAS, EVENT_CONFIG, FUNCTION, VERSION, FunctionRecord
from firebox.errors import InvalidParameterValue, PreconditionFailed, ResourceConflict, ResourceNotFound
from firebox.store.api import Tx


def not_found(scope: Scope, name: str, qualifier: str | None = None) -> ResourceNotFound:
    return ResourceNotFound(f"Function not found: {scope.function_arn(name, qualifier)}")


def load(tx: Tx, scope: Scope, name: str) -> FunctionRecord:
    doc = tx.get(FUNCTION, scope.account_id, name)
    if doc is None:
        raise not_found(scope, name)
    return records.record_from_doc(doc)


def save(tx: Tx, scope: Scope, record: FunctionRecord) -> None:
    tx.put(FUNCTION, scope.account_id, record.latest.name, records.record_to_doc(record))


def check_revision(current: str, given: str | None) -> None:
    if given is not None and given != current:
        raise PreconditionFailed(
            "The Revision Id provided does not match the latest Revision Id. "
            "Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
        )


def resolve(tx: Tx, scope: Scope, ref: FunctionRef) -> tuple[FunctionVersion, str | None]:
    """The version a qualifier names, and the alias name when it named an alias."""
    record = load(tx, scope, ref.name)
    qualifier = ref.qualifier
    if qualifier is None or qualifier == LATEST:
        return record.latest, None
    if qualifier.isdigit():
        doc = tx.get(VERSION, records.function_scope(scope.account_id, ref.name), records.version_key(qualifier))
        if doc is None:
            raise not_found(scope, ref.name, qualifier)
        return records.version_from_doc(doc), None
    alias = tx.get(ALIAS, records.function_scope(scope.account_id, ref.name), qualifier)
    if alias is None:
        raise not_found(scope, ref.name, qualifier)
    target, _ = resolve(tx, scope, FunctionRef(ref.name, alias["function_version"]))
    return target, qualifier


def create(tx: Tx, scope: Scope, cmd: CreateFunction, code_sha256: str, code_size: int) -> FunctionVersion:
    if tx.get(FUNCTION, scope.account_id, cmd.name) is not None:
        raise ResourceConflict(f"Function already exist: {cmd.name}")
    latest = lifecycle.initial(
        FunctionVersion(
            name=cmd.name,
            version=LATEST,
            role=cmd.role,
            runtime=cmd.runtime,
            handler=cmd.handler,
            code_sha256=code_sha256,
            code_size=code_size,
            description=cmd.description,
            timeout=cmd.timeout,
            memory_size=cmd.memory_size,
            ephemeral_storage=cmd.ephemeral_storage,
            environment=dict(cmd.environment) if cmd.environment is not None else None,
            architectures=cmd.architectures,
            package_type=cmd.package_type,
            tracing_mode=cmd.tracing_mode,
            logging=cmd.logging,
            dead_letter_target_arn=cmd.dead_letter_target_arn,
            kms_key_arn=cmd.kms_key_arn,
            last_modified=records.now_lambda(),
        )
    )
    save(tx, scope, FunctionRecord(latest=latest, tags=dict(cmd.tags)))
    return latest


def _begin_update(tx: Tx, scope: Scope, ref: FunctionRef, revision_id: str | None) -> FunctionRecord:
    if ref.qualifier is not None:
        raise InvalidParameterValue("Qualifier is not supported for this operation: update $LATEST by name.")
    record = load(tx, scope, ref.name)
    check_revision(record.latest.revision_id, revision_id)
    return record


def update_code(tx: Tx, scope: Scope, cmd: UpdateCode, code_sha256: str, code_size: int) -> FunctionVersion:
    record = _begin_update(tx, scope, cmd.ref, cmd.revision_id)
    changed = dataclasses.replace(
        record.latest,
        code_sha256=code_sha256,
        code_size=code_size,
        architectures=cmd.architectures or record.latest.architectures,
        last_modified=records.now_lambda(),
    )
    latest = lifecycle.apply(changed, lifecycle.Event.UPDATE, scope.function_arn(cmd.ref.name))
    if cmd.dry_run:
        # Validate everything and answer as if done, but write nothing (AWS's DryRun).
        return dataclasses.replace(record.latest, code_sha256=code_sha256, code_size=code_size)
    save(tx, scope, dataclasses.replace(record, latest=latest))
    return latest


def update_configuration(tx: Tx, scope: Scope, cmd: UpdateConfiguration) -> FunctionVersion:
    record = _begin_update(tx, scope, cmd.ref, cmd.revision_id)
    changes = dict(cmd.changes)
    if isinstance(changes.get("logging"), dict):
        # LoggingConfig fields not given keep their current values.
        changes["logging"] = dataclasses.replace(record.latest.logging, **changes["logging"])  # type: ignore[arg-type]
    changed = dataclasses.replace(record.latest, last_modified=records.now_lambda(), **changes)  # type: ignore[arg-type]
    latest = lifecycle.apply(changed, lifecycle.Event.UPDATE, scope.function_arn(cmd.ref.name))
    save(tx, scope, dataclasses.replace(record, latest=latest))
    return latest


def finish_preparation(
    tx: Tx, scope: Scope, name: str, revision_id: str, failure: PrepareFailure | None
) -> bool:
    """Apply the outcome of preparing revision `revision_id`; False if the function moved on."""
    doc = tx.get(FUNCTION, scope.account_id, name)
    if doc is None:
        return False
    record = records.record_from_doc(doc)
    if record.latest.revision_id != revision_id:
        return False
    if failure is None:
        latest = lifecycle.apply(record.latest, lifecycle.Event.PREPARED, scope.function_arn(name))
    else:
        latest = lifecycle.apply(record.latest, lifecycle.Event.PREPARE_FAILED, scope.function_arn(name),
                                 reason=failure.reason, reason_code=failure.reason_code)
    save(tx, scope, dataclasses.replace(record, latest=latest))
    return True


def busy_functions(tx: Tx, scope: Scope) -> list[FunctionVersion]:
    """Every `$LATEST` whose preparation has not finished (to resume after a restart)."""
    return [
        v
        for _, doc in tx.scan(FUNCTION, scope.account_id)
        if (v := records.version_from_doc(doc["latest"])).busy
    ]


def details(tx: Tx, scope: Scope, ref: FunctionRef) -> FunctionDetails:
    config, alias = resolve(tx, scope, ref)
    record = load(tx, scope, ref.name)
    return FunctionDetails(config=config, alias=alias, tags=record.tags, reserved_concurrency=record.reserved_concurrency)


def delete(tx: Tx, scope: Scope, ref: FunctionRef) -> list[str]:
    """Delete a function (or one version); returns the code hashes no longer referenced."""
    record = load(tx, scope, ref.name)
    fscope = records.function_scope(scope.account_id, ref.name)
    if ref.qualifier is None:
        hashes = {record.latest.code_sha256} | {d["code_sha256"] for _, d in tx.scan(VERSION, fscope)}
        tx.delete(FUNCTION, scope.account_id, ref.name)
        tx.delete_scope(VERSION, fscope)
        tx.delete_scope(ALIAS, fscope)
        tx.delete_scope(EVENT_CONFIG, fscope)
        return [h for h in hashes if not code_in_use(tx, scope, h)]
    if ref.qualifier == LATEST:
        raise InvalidParameterValue("$LATEST version cannot be deleted without deleting the function.")
    if not ref.qualifier.isdigit():
        raise InvalidParameterValue("Deletion of aliases is not supported by DeleteFunction: use DeleteAlias.")
    doc = tx.get(VERSION, fscope, records.version_key(ref.qualifier))
    if doc is None:
        raise not_found(scope, ref.name, ref.qualifier)
    users = sorted(
        scope.function_arn(ref.name, key)
        for key, alias in tx.scan(ALIAS, fscope)
        if alias["function_version"] == ref.qualifier or ref.qualifier in alias["additional_weights"]
    )
    if users:
        raise ResourceConflict(
            f"Unable to delete version because the following aliases reference it: [{', '.join(users)}]"
        )
    tx.delete(VERSION, fscope, records.version_key(ref.qualifier))
    tx.delete(EVENT_CONFIG, fscope, ref.qualifier)
    return [doc["code_sha256"]] if not code_in_use(tx, scope, doc["code_sha256"]) else []


def code_in_use(tx: Tx, scope: Scope, code_sha256: str) -> bool:
    for name, doc in tx.scan(FUNCTION, scope.account_id):
        if doc["latest"]["code_sha256"] == code_sha256:
            return True
        if any(v["code_sha256"] == code_sha256 for _, v in tx.scan(VERSION, records.function_scope(scope.account_id, name))):
            return True
    return False


def encode_marker(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_marker(marker: str | None) -> str | None:
    if marker is None:
        return None
    try:
        return base64.urlsafe_b64decode(marker.encode()).decode()
    except ValueError as exc:
        raise InvalidParameterValue(f"Invalid marker: {marker}") from exc


def listing(tx: Tx, scope: Scope, *, all_versions: bool, marker: str | None, max_items: int) -> Page:
    """ListFunctions: functions by name; with FunctionVersion=ALL, each function's $LATEST then its
    versions in order. The marker (opaque to callers) is the last `name` or `name NUL version-key`
    returned; `$LATEST` is the empty version key, so it sorts first."""
    after = decode_marker(marker)
    if not all_versions:
        rows = tx.scan(FUNCTION, scope.account_id, after=after, limit=max_items + 1)
        page = [records.record_from_doc(doc).latest for _, doc in rows[:max_items]]
        more = len(rows) > max_items
        return Page(tuple(page), encode_marker(rows[max_items - 1][0]) if more else None)
    after_name, _, after_version = (after or "").partition("\0")
    items: list[FunctionVersion] = []
    last = ("", "")
    for name, doc in tx.scan(FUNCTION, scope.account_id):
        if after is not None and name < after_name:
            continue
        fscope = records.function_scope(scope.account_id, name)
        entries: list[tuple[str, Callable[[], FunctionVersion]]] = [
            ("", lambda doc=doc: records.record_from_doc(doc).latest)
        ]
        entries += [(key, lambda v=v: records.version_from_doc(v)) for key, v in tx.scan(VERSION, fscope)]
        for version_key, make in entries:
            if after is not None and (name, version_key) <= (after_name, after_version):
                continue
            if len(items) == max_items:
                return Page(tuple(items), encode_marker(f"{last[0]}\0{last[1]}"))
            items.append(make())
            last = (name, version_key)
    return Page(tuple(items), None)
