"""Aliases: named pointers to a version, optionally splitting traffic with one other version."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from firebox.arns import LATEST, FunctionRef, Scope
from firebox.control import records, validation
from firebox.control.api import Alias, Page
from firebox.control.functions import check_revision, decode_marker, encode_marker, load, not_found
from firebox.control.records import ALIAS, VERSION
from firebox.errors import InvalidParameterValue, ResourceConflict, ResourceNotFound
from firebox.store.api import Tx


def _unqualified(ref: FunctionRef) -> None:
    if ref.qualifier is not None:
        raise InvalidParameterValue("Qualifier is not supported for alias operations: name the function only.")


def _check_version_exists(tx: Tx, scope: Scope, name: str, version: str) -> None:
    if version == LATEST:
        return
    if not version.isdigit():
        raise InvalidParameterValue(f"Invalid function version {version}: an alias points to $LATEST or a version number.")
    if tx.get(VERSION, records.function_scope(scope.account_id, name), records.version_key(version)) is None:
        raise not_found(scope, name, version)


def _check_target(tx: Tx, scope: Scope, name: str, version: str, weights: Mapping[str, float]) -> None:
    _check_version_exists(tx, scope, name, version)
    validation.check_weights(version, weights)
    for extra in weights:
        _check_version_exists(tx, scope, name, extra)


def _get(tx: Tx, scope: Scope, ref: FunctionRef, name: str) -> Alias:
    load(tx, scope, ref.name)
    doc = tx.get(ALIAS, records.function_scope(scope.account_id, ref.name), name)
    if doc is None:
        raise ResourceNotFound(f"Cannot find alias arn: {scope.function_arn(ref.name, name)}")
    return records.alias_from_doc(doc)


def create(
    tx: Tx, scope: Scope, ref: FunctionRef, name: str, version: str, description: str, weights: Mapping[str, float]
) -> Alias:
    _unqualified(ref)
    load(tx, scope, ref.name)
    _check_target(tx, scope, ref.name, version, weights)
    alias = Alias(ref.name, name, version, description, dict(weights), records.new_revision())
    if not tx.insert(ALIAS, records.function_scope(scope.account_id, ref.name), name, records.alias_to_doc(alias)):
        raise ResourceConflict(f"Alias already exists: {scope.function_arn(ref.name, name)}")
    return alias


def get(tx: Tx, scope: Scope, ref: FunctionRef, name: str) -> Alias:
    _unqualified(ref)
    return _get(tx, scope, ref, name)


def update(
    tx: Tx,
    scope: Scope,
    ref: FunctionRef,
    name: str,
    *,
    version: str | None,
    description: str | None,
    weights: Mapping[str, float] | None,
    revision_id: str | None,
) -> Alias:
    _unqualified(ref)
    alias = _get(tx, scope, ref, name)
    check_revision(alias.revision_id, revision_id)
    changed = dataclasses.replace(
        alias,
        function_version=alias.function_version if version is None else version,
        description=alias.description if description is None else description,
        additional_weights=alias.additional_weights if weights is None else dict(weights),
        revision_id=records.new_revision(),
    )
    _check_target(tx, scope, ref.name, changed.function_version, changed.additional_weights)
    tx.put(ALIAS, records.function_scope(scope.account_id, ref.name), name, records.alias_to_doc(changed))
    return changed


def delete(tx: Tx, scope: Scope, ref: FunctionRef, name: str) -> None:
    _unqualified(ref)
    load(tx, scope, ref.name)
    # Deleting an alias that does not exist succeeds, as on AWS.
    fscope = records.function_scope(scope.account_id, ref.name)
    tx.delete(ALIAS, fscope, name)
    tx.delete(records.EVENT_CONFIG, fscope, name)


def listing(
    tx: Tx, scope: Scope, ref: FunctionRef, *, version: str | None, marker: str | None, max_items: int
) -> Page:
    _unqualified(ref)
    load(tx, scope, ref.name)
    fscope = records.function_scope(scope.account_id, ref.name)
    matching = [
        (key, records.alias_from_doc(doc))
        for key, doc in tx.scan(ALIAS, fscope, after=decode_marker(marker))
        if version is None or doc["function_version"] == version
    ]
    page, more = matching[:max_items], len(matching) > max_items
    return Page(tuple(a for _, a in page), encode_marker(page[-1][0]) if more else None)
