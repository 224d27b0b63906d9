"""Published versions: immutable snapshots of `$LATEST`, numbered from 1, never renumbered.

Publishing is idempotent: when nothing changed since the last published version (same code and
configuration), PublishVersion returns that version instead of minting a new one, as AWS does.
"""

from __future__ import annotations

import dataclasses

from firebox.arns import LATEST, FunctionRef, Scope
from firebox.control import records
from firebox.control.api import FunctionVersion, Page, State, UpdateStatus
from firebox.control.functions import check_revision, decode_marker, encode_marker, load, save
from firebox.control.records import VERSION
from firebox.errors import InvalidParameterValue, ResourceConflict
from firebox.store.api import Tx


def publish(
    tx: Tx,
    scope: Scope,
    ref: FunctionRef,
    *,
    code_sha256: str | None,
    description: str | None,
    revision_id: str | None,
    allow_busy: bool = False,
) -> FunctionVersion:
    """Publish $LATEST. `allow_busy` is for Publish=True on create/update, which versions the
    package being prepared in the same request (AWS answers those with the new version)."""
    if ref.qualifier is not None:
        raise InvalidParameterValue("Qualifier is not supported for PublishVersion: name the function only.")
    record = load(tx, scope, ref.name)
    latest = record.latest
    if latest.busy and not allow_busy:
        raise ResourceConflict(
            "The operation cannot be performed at this time. "
            f"An update is in progress for resource: {scope.function_arn(ref.name)}"
        )
    check_revision(latest.revision_id, revision_id)
    if code_sha256 is not None and code_sha256 != latest.code_sha256:
        raise InvalidParameterValue(
            f"CodeSHA256 ({code_sha256}) is different from current CodeSHA256 in $LATEST "
            f"({latest.code_sha256}). Please try again with the CodeSHA256 in $LATEST."
        )
    fingerprint = records.fingerprint(latest)
    fscope = records.function_scope(scope.account_id, ref.name)
    if record.published_fingerprint == fingerprint and record.last_version:
        existing = tx.get(VERSION, fscope, records.version_key(record.last_version))
        if existing is not None:
            return records.version_from_doc(existing)
    number = record.last_version + 1
    version = dataclasses.replace(
        latest,
        version=str(number),
        description=latest.description if description is None else description,
        state=State.ACTIVE,
        state_reason=None,
        state_reason_code=None,
        last_update_status=UpdateStatus.SUCCESSFUL,
        last_update_status_reason=None,
        last_update_status_reason_code=None,
        last_modified=records.now_lambda(),
        revision_id=records.new_revision(),
    )
    tx.put(VERSION, fscope, records.version_key(number), records.version_to_doc(version))
    # Publishing changes the function: $LATEST gets a new RevisionId too (as on AWS), except
    # while it is being prepared: the preparer finishes the revision it was given.
    bumped = latest if latest.busy else dataclasses.replace(latest, revision_id=records.new_revision())
    save(tx, scope, dataclasses.replace(record, latest=bumped, last_version=number, published_fingerprint=fingerprint))
    return version


def listing(tx: Tx, scope: Scope, ref: FunctionRef, *, marker: str | None, max_items: int) -> Page:
    """$LATEST first, then versions in ascending order. The marker is the last version key
    returned; `$LATEST` sorts before every zero-padded number, so it serves as its own key."""
    record = load(tx, scope, ref.name)
    fscope = records.function_scope(scope.account_id, ref.name)
    after = decode_marker(marker)
    rows: list[tuple[str, FunctionVersion]] = []
    if after is None:
        rows.append((LATEST, record.latest))
    for key, doc in tx.scan(VERSION, fscope, after=after, limit=max_items + 1):
        rows.append((key, records.version_from_doc(doc)))
    page, more = rows[:max_items], len(rows) > max_items
    return Page(tuple(v for _, v in page), encode_marker(page[-1][0]) if more else None)
