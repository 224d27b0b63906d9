"""The lifecycle of `$LATEST`, as an explicit state machine.

    phase       State    LastUpdateStatus      legal events
    (none)      -        -                     CREATE -> PENDING
    PENDING     Pending  -                     PREPARED -> ACTIVE, PREPARE_FAILED -> FAILED
    ACTIVE      Active   Successful | Failed   UPDATE -> UPDATING
    UPDATING    Active   InProgress            PREPARED -> ACTIVE, PREPARE_FAILED -> ACTIVE (Failed)
    FAILED      Failed   -                     UPDATE -> PENDING (a new package gets a new chance)

An UPDATE in PENDING or UPDATING is the `ResourceConflictException` AWS answers while a change
is being applied. Every transition mints a new RevisionId, as AWS does.
"""

from __future__ import annotations

import dataclasses
import enum

from firebox.control.api import FunctionVersion, State, UpdateStatus
from firebox.control.records import new_revision
from firebox.errors import ResourceConflict


class Phase(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    UPDATING = "updating"
    FAILED = "failed"


class Event(enum.Enum):
    UPDATE = "update"
    PREPARED = "prepared"
    PREPARE_FAILED = "prepare_failed"


_TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.PENDING, Event.PREPARED): Phase.ACTIVE,
    (Phase.PENDING, Event.PREPARE_FAILED): Phase.FAILED,
    (Phase.ACTIVE, Event.UPDATE): Phase.UPDATING,
    (Phase.UPDATING, Event.PREPARED): Phase.ACTIVE,
    (Phase.UPDATING, Event.PREPARE_FAILED): Phase.ACTIVE,
    (Phase.FAILED, Event.UPDATE): Phase.PENDING,
}


def phase_of(v: FunctionVersion) -> Phase:
    if v.state is State.PENDING:
        return Phase.PENDING
    if v.state is State.FAILED:
        return Phase.FAILED
    if v.last_update_status is UpdateStatus.IN_PROGRESS:
        return Phase.UPDATING
    return Phase.ACTIVE


def initial(v: FunctionVersion) -> FunctionVersion:
    """A just-created function: Pending until its package is prepared."""
    return dataclasses.replace(
        v,
        state=State.PENDING,
        state_reason="The function is being created.",
        state_reason_code="Creating",
        last_update_status=None,
        last_update_status_reason=None,
        last_update_status_reason_code=None,
        revision_id=new_revision(),
    )


def apply(
    v: FunctionVersion, event: Event, arn: str, reason: str | None = None,
    reason_code: str = "InvalidZipFileException",
) -> FunctionVersion:
    """`v` after `event`; ResourceConflict when the event is not legal in v's phase. A
    PREPARE_FAILED carries its `reason` and `reason_code` (AWS's StateReasonCode: the package's
    fault is `InvalidZipFileException`, the host's `InternalError`)."""
    current = phase_of(v)
    target = _TRANSITIONS.get((current, event))
    if target is None:
        if current is Phase.PENDING:
            raise ResourceConflict(
                "The operation cannot be performed at this time. "
                "The function is currently in the following state: Pending"
            )
        raise ResourceConflict(
            f"The operation cannot be performed at this time. An update is in progress for resource: {arn}"
        )
    fields: dict[str, object] = {"revision_id": new_revision()}
    if target is Phase.PENDING:
        fields.update(state=State.PENDING, state_reason="The function is being created.",
                      state_reason_code="Creating", last_update_status=None,
                      last_update_status_reason=None, last_update_status_reason_code=None)
    elif target is Phase.UPDATING:
        fields.update(last_update_status=UpdateStatus.IN_PROGRESS,
                      last_update_status_reason="The function is being created.",
                      last_update_status_reason_code="Creating")
    elif target is Phase.FAILED:
        fields.update(state=State.FAILED, state_reason=reason, state_reason_code=reason_code,
                      last_update_status=UpdateStatus.FAILED, last_update_status_reason=reason,
                      last_update_status_reason_code=reason_code)
    elif event is Event.PREPARE_FAILED:
        fields.update(last_update_status=UpdateStatus.FAILED, last_update_status_reason=reason,
                      last_update_status_reason_code=reason_code)
    else:
        fields.update(state=State.ACTIVE, state_reason=None, state_reason_code=None,
                      last_update_status=UpdateStatus.SUCCESSFUL, last_update_status_reason=None,
                      last_update_status_reason_code=None)
    return dataclasses.replace(v, **fields)  # type: ignore[arg-type]
