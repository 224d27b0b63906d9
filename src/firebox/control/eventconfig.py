"""Event invoke configuration: retries, maximum event age and destinations of asynchronous
invocations, per qualifier (`$LATEST` when unqualified, a version number, or an alias).

Put replaces the whole configuration (unset fields take Lambda's defaults); Update merges the
given fields into the existing one. Records live beside the function (kind `event-config`) and
are deleted with it.
"""

from __future__ import annotations

import dataclasses
import time

from firebox.arns import LATEST, FunctionRef, Scope, parse_function_arn
from firebox.control import records
from firebox.control.api import EventInvokeConfig, Page
from firebox.control.functions import decode_marker, encode_marker, load, resolve
from firebox.control.records import EVENT_CONFIG
from firebox.errors import InvalidParameterValue, ResourceNotFound
from firebox.store.api import Tx

DEFAULT_RETRIES = 2
DEFAULT_MAX_AGE_S = 21600


def _qualifier(ref: FunctionRef) -> str:
    return ref.qualifier or LATEST


def _missing(scope: Scope, ref: FunctionRef) -> ResourceNotFound:
    return ResourceNotFound(
        f"The function {scope.function_arn(ref.name, _qualifier(ref))} doesn't have an EventInvokeConfig"
    )


def check_destination(scope: Scope, arn: str | None) -> None:
    """Lambda functions are the destinations Firebox delivers to so far."""
    if not arn:
        return
    service = arn.split(":")[2] if arn.startswith("arn:") and arn.count(":") >= 5 else ""
    if service != "lambda":
        raise InvalidParameterValue(
            f"The destination ARN {arn} is not supported by Firebox yet: use a Lambda function ARN "
            "(queues, topics and event buses arrive with those services)."
        )
    parse_function_arn(arn, scope)


def _to_doc(config: EventInvokeConfig) -> dict[str, object]:
    return dataclasses.asdict(config)


def _from_doc(doc: dict[str, object]) -> EventInvokeConfig:
    return EventInvokeConfig(**doc)  # type: ignore[arg-type]


def put(tx: Tx, scope: Scope, ref: FunctionRef, config: EventInvokeConfig, *, merge: bool) -> EventInvokeConfig:
    resolve(tx, scope, ref)  # the function and the qualifier must exist
    given = (config.maximum_retry_attempts, config.maximum_event_age_s, config.on_success, config.on_failure)
    if all(value is None for value in given):
        raise InvalidParameterValue("You must specify at least one of error handling or destination setting.")
    for destination in (config.on_success, config.on_failure):
        check_destination(scope, destination)
        if destination and parse_function_arn(destination, scope).name == ref.name:
            raise InvalidParameterValue("You can't specify the function as a destination for itself.")
    fscope = records.function_scope(scope.account_id, ref.name)
    key = _qualifier(ref)
    current = tx.get(EVENT_CONFIG, fscope, key)
    if merge:
        if current is None:
            raise _missing(scope, ref)
        base = _from_doc(current)
        config = EventInvokeConfig(
            qualifier=key,
            maximum_retry_attempts=base.maximum_retry_attempts if config.maximum_retry_attempts is None
            else config.maximum_retry_attempts,
            maximum_event_age_s=base.maximum_event_age_s if config.maximum_event_age_s is None
            else config.maximum_event_age_s,
            on_success=base.on_success if config.on_success is None else config.on_success,
            on_failure=base.on_failure if config.on_failure is None else config.on_failure,
            last_modified=time.time(),
        )
    else:
        config = dataclasses.replace(config, qualifier=key, last_modified=time.time())
    tx.put(EVENT_CONFIG, fscope, key, _to_doc(config))
    return config


def get(tx: Tx, scope: Scope, ref: FunctionRef) -> EventInvokeConfig:
    load(tx, scope, ref.name)
    doc = tx.get(EVENT_CONFIG, records.function_scope(scope.account_id, ref.name), _qualifier(ref))
    if doc is None:
        raise _missing(scope, ref)
    return _from_doc(doc)


def find(tx: Tx, scope: Scope, ref: FunctionRef) -> EventInvokeConfig | None:
    """The configuration that applies to an event invoked as `ref`, if any (no errors)."""
    doc = tx.get(EVENT_CONFIG, records.function_scope(scope.account_id, ref.name), _qualifier(ref))
    return _from_doc(doc) if doc is not None else None


def delete(tx: Tx, scope: Scope, ref: FunctionRef) -> None:
    load(tx, scope, ref.name)
    if not tx.delete(EVENT_CONFIG, records.function_scope(scope.account_id, ref.name), _qualifier(ref)):
        raise _missing(scope, ref)


def listing(tx: Tx, scope: Scope, ref: FunctionRef, *, marker: str | None, max_items: int) -> Page:
    load(tx, scope, ref.name)
    rows = tx.scan(EVENT_CONFIG, records.function_scope(scope.account_id, ref.name),
                   after=decode_marker(marker), limit=max_items + 1)
    page = rows[:max_items]
    more = len(rows) > max_items
    return Page(tuple(_from_doc(doc) for _, doc in page), encode_marker(page[-1][0]) if more else None)
