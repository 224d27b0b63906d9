"""How the registry's values are laid out in the metadata store.

    kind       scope                 key                 document
    function   <account>             <name>              FunctionRecord: $LATEST + function-wide data
    version    <account>/<name>      <version, 10 digits> FunctionVersion (immutable once written)
    alias      <account>/<name>      <alias name>        Alias
    event-config <account>/<name>    <qualifier>         EventInvokeConfig

Version keys are zero-padded so that the store's byte order is numeric order.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from firebox.control.api import Alias, FunctionVersion, LoggingConfig, State, UpdateStatus
from firebox.store.api import Document

FUNCTION = "function"
VERSION = "version"
ALIAS = "alias"
EVENT_CONFIG = "event-config"


def function_scope(account_id: str, name: str) -> str:
    return f"{account_id}/{name}"


def version_key(version: int | str) -> str:
    return f"{int(version):010d}"


def new_revision() -> str:
    return str(uuid.uuid4())


def now_lambda() -> str:
    """Lambda's LastModified format: 2024-01-01T12:00:00.000+0000."""
    moment = datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


@dataclass(frozen=True)
class FunctionRecord:
    latest: FunctionVersion
    tags: dict[str, str] = field(default_factory=dict)
    reserved_concurrency: int | None = None
    last_version: int = 0  # the highest version number ever published
    # What the last published version was made from, to make publishing idempotent.
    published_fingerprint: str | None = None


def version_to_doc(v: FunctionVersion) -> Document:
    doc = dataclasses.asdict(v)
    doc["state"] = v.state.value
    doc["last_update_status"] = v.last_update_status.value if v.last_update_status else None
    doc["environment"] = dict(v.environment) if v.environment is not None else None
    doc["architectures"] = list(v.architectures)
    return doc


def version_from_doc(doc: Document) -> FunctionVersion:
    values: dict[str, Any] = dict(doc)
    values["state"] = State(doc["state"])
    values["last_update_status"] = UpdateStatus(doc["last_update_status"]) if doc.get("last_update_status") else None
    values["architectures"] = tuple(doc["architectures"])
    values["logging"] = LoggingConfig(**doc["logging"])
    return FunctionVersion(**values)


def record_to_doc(r: FunctionRecord) -> Document:
    return {
        "latest": version_to_doc(r.latest),
        "tags": dict(r.tags),
        "reserved_concurrency": r.reserved_concurrency,
        "last_version": r.last_version,
        "published_fingerprint": r.published_fingerprint,
    }


def record_from_doc(doc: Document) -> FunctionRecord:
    return FunctionRecord(
        latest=version_from_doc(doc["latest"]),
        tags=dict(doc.get("tags") or {}),
        reserved_concurrency=doc.get("reserved_concurrency"),
        last_version=doc.get("last_version", 0),
        published_fingerprint=doc.get("published_fingerprint"),
    )


def alias_to_doc(a: Alias) -> Document:
    doc = dataclasses.asdict(a)
    doc["additional_weights"] = dict(a.additional_weights)
    return doc


def alias_from_doc(doc: Document) -> Alias:
    return Alias(**doc)


# Fields that do not make a version different from another (publishing is idempotent over them).
_VOLATILE = {"version", "state", "state_reason", "state_reason_code", "last_update_status",
             "last_update_status_reason", "last_update_status_reason_code", "last_modified",
             "revision_id"}


def fingerprint(v: FunctionVersion) -> str:
    doc = version_to_doc(v)
    stable = {k: doc[k] for k in sorted(doc) if k not in _VOLATILE}
    return repr(stable)
