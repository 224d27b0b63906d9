"""Destinations, dead-letter targets and the event invoke config API (issue 4, items 4 and 5)."""

from __future__ import annotations

import datetime
import re
from typing import Any

from tests.e2e.helpers import FireboxServer, raises_aws, unique_name

from .support import (
    LogBarrier,
    create_sink,
    create_worker,
    function_arn,
    send_event,
    sink_records,
    wait_sink,
    wait_stats,
)

TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _check_envelope(record: dict[str, Any], request_id: str, arn: str, condition: str, count: int) -> None:
    assert record["version"] == "1.0", record
    assert TIMESTAMP_RE.match(record["timestamp"]), record["timestamp"]
    assert record["requestContext"] == {
        "requestId": request_id, "functionArn": arn, "condition": condition, "approximateInvokeCount": count,
    }, record["requestContext"]


def test_on_success_destination_gets_the_success_record(aserver: FireboxServer, lam: Any, logs: Any, sink: str) -> None:
    name = create_worker(lam)
    lam.put_function_event_invoke_config(FunctionName=name,
                                         DestinationConfig={"OnSuccess": {"Destination": function_arn(sink)}})
    event = {"order": 42, "items": ["a", "b"]}
    request_id = send_event(lam, name, event)
    [record] = wait_sink(logs, sink, request_id)
    _check_envelope(record, request_id, function_arn(name, "$LATEST"), "Success", 1)
    assert record["requestPayload"] == event
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}, record
    assert record["responsePayload"] == {"ok": True, "echo": event}, record


def test_on_failure_destination_gets_retries_exhausted_after_the_retries(
    aserver: FireboxServer, lam: Any, logs: Any, sink: str
) -> None:
    name = create_worker(lam, mode="raise")
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=1,
                                         DestinationConfig={"OnFailure": {"Destination": function_arn(sink)}})
    event = {"will": "fail"}
    request_id = send_event(lam, name, event)
    [record] = wait_sink(logs, sink, request_id)
    _check_envelope(record, request_id, function_arn(name, "$LATEST"), "RetriesExhausted", 2)
    assert record["requestPayload"] == event
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST",
                                         "functionError": "Unhandled"}, record
    payload = record["responsePayload"]
    assert payload["errorType"] == "RuntimeError", payload
    assert payload["errorMessage"] == f"boom {request_id}", payload


def test_success_goes_only_to_on_success_and_failure_only_to_on_failure(
    aserver: FireboxServer, lam: Any, logs: Any, barrier: LogBarrier
) -> None:
    good, bad = create_sink(lam), create_sink(lam)
    destinations = {"OnSuccess": {"Destination": function_arn(good)},
                    "OnFailure": {"Destination": function_arn(bad)}}
    ok = create_worker(lam)
    failing = create_worker(lam, mode="raise")
    for name in (ok, failing):
        lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0,
                                             DestinationConfig=destinations)
    ok_id = send_event(lam, ok, {"n": 1})
    bad_id = send_event(lam, failing, {"n": 2})
    wait_sink(logs, good, ok_id)
    wait_sink(logs, bad, bad_id)
    wait_stats(aserver, good, succeeded=1)
    wait_stats(aserver, bad, succeeded=1)
    barrier.sync()
    assert [r["requestContext"]["requestId"] for r in sink_records(logs, good)] == [ok_id]
    assert [r["requestContext"]["requestId"] for r in sink_records(logs, bad)] == [bad_id]


def test_alias_config_applies_to_events_invoked_through_the_alias(
    aserver: FireboxServer, lam: Any, logs: Any, sink: str
) -> None:
    name = create_worker(lam)
    lam.publish_version(FunctionName=name)
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
    lam.put_function_event_invoke_config(FunctionName=name, Qualifier="live",
                                         DestinationConfig={"OnSuccess": {"Destination": function_arn(sink)}})
    request_id = send_event(lam, name, {"via": "alias"}, qualifier="live")
    [record] = wait_sink(logs, sink, request_id)
    _check_envelope(record, request_id, function_arn(name, "live"), "Success", 1)
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "1"}, record


def test_dead_letter_target_gets_exactly_the_original_event(
    aserver: FireboxServer, lam: Any, logs: Any, sink: str, barrier: LogBarrier
) -> None:
    name = create_worker(lam, mode="raise", DeadLetterConfig={"TargetArn": function_arn(sink)})
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    event = {"dead": "letter", "nested": {"x": [1, 2, 3]}}
    send_event(lam, name, event)
    [letter] = wait_sink(logs, sink)
    assert letter == event, f"a dead-letter target receives the original event body only, got {letter}"
    wait_stats(aserver, name, failed=1)
    barrier.sync()
    assert sink_records(logs, sink) == [event], "exactly one dead letter"


def test_dead_letter_target_not_used_on_success(aserver: FireboxServer, lam: Any, logs: Any, sink: str,
                                                barrier: LogBarrier) -> None:
    name = create_worker(lam, DeadLetterConfig={"TargetArn": function_arn(sink)})
    send_event(lam, name, {"fine": True})
    wait_stats(aserver, name, succeeded=1)
    barrier.sync()
    assert sink_records(logs, sink) == []


# -- the event invoke config API ----------------------------------------------------------------


def _strip(config: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k != "ResponseMetadata"}
    assert isinstance(out.pop("LastModified"), datetime.datetime), config
    return out


def test_event_invoke_config_put_update_get_delete_list(lam: Any, raw_lam: Any) -> None:
    name = create_worker(lam)
    one, two = create_sink(lam), create_sink(lam)
    lam.publish_version(FunctionName=name)
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
    latest_arn = function_arn(name, "$LATEST")

    put = lam.put_function_event_invoke_config(
        FunctionName=name, MaximumRetryAttempts=1, MaximumEventAgeInSeconds=120,
        DestinationConfig={"OnSuccess": {"Destination": function_arn(one)}},
    )
    expected = {"FunctionArn": latest_arn, "MaximumRetryAttempts": 1, "MaximumEventAgeInSeconds": 120,
                "DestinationConfig": {"OnSuccess": {"Destination": function_arn(one)}, "OnFailure": {}}}
    assert _strip(put) == expected
    assert _strip(lam.get_function_event_invoke_config(FunctionName=name)) == expected

    # Put replaces: what it does not give is gone.
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    assert _strip(lam.get_function_event_invoke_config(FunctionName=name)) == {
        "FunctionArn": latest_arn, "MaximumRetryAttempts": 0,
        "DestinationConfig": {"OnSuccess": {}, "OnFailure": {}},
    }

    # Update merges: what it gives changes, the rest stays.
    lam.update_function_event_invoke_config(FunctionName=name, MaximumEventAgeInSeconds=300)
    lam.update_function_event_invoke_config(
        FunctionName=name, DestinationConfig={"OnFailure": {"Destination": function_arn(two)}})
    merged = _strip(lam.get_function_event_invoke_config(FunctionName=name))
    assert merged == {"FunctionArn": latest_arn, "MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 300,
                      "DestinationConfig": {"OnSuccess": {}, "OnFailure": {"Destination": function_arn(two)}}}
    # A full ARN as FunctionName addresses the same configuration.
    assert _strip(lam.get_function_event_invoke_config(FunctionName=function_arn(name))) == merged

    # Per qualifier: version 1 and the alias have their own.
    lam.put_function_event_invoke_config(FunctionName=name, Qualifier="1", MaximumRetryAttempts=2)
    lam.put_function_event_invoke_config(FunctionName=name, Qualifier="live", MaximumEventAgeInSeconds=60)
    assert _strip(lam.get_function_event_invoke_config(FunctionName=name, Qualifier="1")) == {
        "FunctionArn": function_arn(name, "1"), "MaximumRetryAttempts": 2,
        "DestinationConfig": {"OnSuccess": {}, "OnFailure": {}}}
    assert _strip(lam.get_function_event_invoke_config(FunctionName=name, Qualifier="live")) == {
        "FunctionArn": function_arn(name, "live"), "MaximumEventAgeInSeconds": 60,
        "DestinationConfig": {"OnSuccess": {}, "OnFailure": {}}}
    listed = lam.list_function_event_invoke_configs(FunctionName=name)["FunctionEventInvokeConfigs"]
    assert sorted(c["FunctionArn"] for c in listed) == sorted(
        [latest_arn, function_arn(name, "1"), function_arn(name, "live")])
    # Pagination.
    first = lam.list_function_event_invoke_configs(FunctionName=name, MaxItems=2)
    assert len(first["FunctionEventInvokeConfigs"]) == 2 and first.get("NextMarker"), first
    rest = lam.list_function_event_invoke_configs(FunctionName=name, Marker=first["NextMarker"])
    assert len(rest["FunctionEventInvokeConfigs"]) == 1 and not rest.get("NextMarker"), rest

    # Delete one qualifier; Get and Update of it are then not found, with AWS's message.
    lam.delete_function_event_invoke_config(FunctionName=name, Qualifier="1")
    missing = f"The function {function_arn(name, '1')} doesn't have an EventInvokeConfig"
    with raises_aws("ResourceNotFoundException", 404, missing):
        lam.get_function_event_invoke_config(FunctionName=name, Qualifier="1")
    with raises_aws("ResourceNotFoundException", 404, missing):
        lam.update_function_event_invoke_config(FunctionName=name, Qualifier="1", MaximumRetryAttempts=1)
    with raises_aws("ResourceNotFoundException", 404, missing):
        lam.delete_function_event_invoke_config(FunctionName=name, Qualifier="1")
    listed = lam.list_function_event_invoke_configs(FunctionName=name)["FunctionEventInvokeConfigs"]
    assert sorted(c["FunctionArn"] for c in listed) == sorted([latest_arn, function_arn(name, "live")])

    # After DeleteFunction the configurations are gone (a new function of that name has none).
    lam.delete_function(FunctionName=name)
    with raises_aws("ResourceNotFoundException", 404):
        lam.list_function_event_invoke_configs(FunctionName=name)
    create_worker(lam, name=name)
    assert lam.list_function_event_invoke_configs(FunctionName=name)["FunctionEventInvokeConfigs"] == []
    with raises_aws("ResourceNotFoundException", 404):
        lam.get_function_event_invoke_config(FunctionName=name)


def test_event_invoke_config_get_missing_is_not_found(lam: Any) -> None:
    name = create_worker(lam)
    with raises_aws("ResourceNotFoundException", 404,
                    f"The function {function_arn(name, '$LATEST')} doesn't have an EventInvokeConfig"):
        lam.get_function_event_invoke_config(FunctionName=name)
    with raises_aws("ResourceNotFoundException", 404):
        lam.update_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=1)
    unknown = unique_name("missing")
    with raises_aws("ResourceNotFoundException", 404, contains=unknown):
        lam.put_function_event_invoke_config(FunctionName=unknown, MaximumRetryAttempts=1)
    with raises_aws("ResourceNotFoundException", 404):
        lam.put_function_event_invoke_config(FunctionName=name, Qualifier="9", MaximumRetryAttempts=1)


def test_event_invoke_config_validation(lam: Any, raw_lam: Any) -> None:
    name = create_worker(lam)
    with raises_aws("ValidationException", 400, contains=("maximumRetryAttempts", "less than or equal to 2")):
        raw_lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=3)
    with raises_aws("ValidationException", 400, contains="maximumRetryAttempts"):
        raw_lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=-1)
    with raises_aws("ValidationException", 400, contains="maximumEventAgeInSeconds"):
        raw_lam.put_function_event_invoke_config(FunctionName=name, MaximumEventAgeInSeconds=59)
    with raises_aws("ValidationException", 400, contains="maximumEventAgeInSeconds"):
        raw_lam.put_function_event_invoke_config(FunctionName=name, MaximumEventAgeInSeconds=21601)
    with raises_aws("ValidationException", 400, contains="maximumRetryAttempts"):
        raw_lam.update_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=5)
    sqs = "arn:aws:sqs:us-east-1:000000000000:my-queue"
    with raises_aws("InvalidParameterValueException", 400):
        lam.put_function_event_invoke_config(FunctionName=name,
                                             DestinationConfig={"OnFailure": {"Destination": sqs}})
    sns = "arn:aws:sns:us-east-1:000000000000:my-topic"
    with raises_aws("InvalidParameterValueException", 400):
        lam.put_function_event_invoke_config(FunctionName=name, DestinationConfig={"OnSuccess": {"Destination": sns}})
    with raises_aws("ValidationException", 400, contains="destinationConfig.onSuccess.destination"):
        raw_lam.put_function_event_invoke_config(FunctionName=name,
                                                 DestinationConfig={"OnSuccess": {"Destination": "nope"}})
    # Nothing was stored by the refused calls.
    with raises_aws("ResourceNotFoundException", 404):
        lam.get_function_event_invoke_config(FunctionName=name)
    # The boundaries themselves are valid.
    ok = lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=2, MaximumEventAgeInSeconds=21600)
    assert (ok["MaximumRetryAttempts"], ok["MaximumEventAgeInSeconds"]) == (2, 21600)
    ok = lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0, MaximumEventAgeInSeconds=60)
    assert (ok["MaximumRetryAttempts"], ok["MaximumEventAgeInSeconds"]) == (0, 60)


def test_event_invoke_config_needs_at_least_one_setting(lam: Any, raw_lam: Any) -> None:
    """AWS refuses a Put or Update that sets nothing: InvalidParameterValueException, "You must
    specify at least one of error handling or destination setting." """
    name = create_worker(lam)
    message = "You must specify at least one of error handling or destination setting."
    with raises_aws("InvalidParameterValueException", 400, message):
        raw_lam.put_function_event_invoke_config(FunctionName=name)
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=1)
    with raises_aws("InvalidParameterValueException", 400, message):
        raw_lam.update_function_event_invoke_config(FunctionName=name)


def test_function_cannot_be_its_own_destination(lam: Any) -> None:
    """AWS refuses a function as its own destination (InvalidParameterValueException, "You can't
    specify the function as a destination for itself."): with OnSuccess pointing at itself every
    success would queue a new event, for ever."""
    name = create_worker(lam)
    for arn in (function_arn(name), function_arn(name, "$LATEST")):
        for where in ("OnSuccess", "OnFailure"):
            with raises_aws("InvalidParameterValueException", 400,
                            "You can't specify the function as a destination for itself."):
                lam.put_function_event_invoke_config(FunctionName=name, DestinationConfig={where: {"Destination": arn}})
    with raises_aws("ResourceNotFoundException", 404):
        lam.get_function_event_invoke_config(FunctionName=name)


def test_destination_of_a_missing_function_is_refused_or_harmless(lam: Any, aserver: FireboxServer) -> None:
    """A destination naming a function that does not exist is either refused by the config API
    (InvalidParameterValueException, as LocalStack models AWS) or, if accepted, never blocks the
    event: it completes and is counted."""
    from botocore.exceptions import ClientError

    name = create_worker(lam)
    try:
        lam.put_function_event_invoke_config(
            FunctionName=name, DestinationConfig={"OnSuccess": {"Destination": function_arn(unique_name("gone"))}})
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "InvalidParameterValueException", exc.response
        return
    send_event(lam, name, {"x": 1})
    stats = wait_stats(aserver, name, succeeded=1)
    assert stats["failed"] == 0 and stats["queued"] + stats["retrying"] + stats["in_flight"] == 0, stats


FLAKY_SOURCE = """
import json

FAILED = set()

def handler(event, context):
    print("RAN", context.aws_request_id, json.dumps(event), flush=True)
    if context.aws_request_id not in FAILED:
        FAILED.add(context.aws_request_id)
        raise RuntimeError("first attempt fails")
    return {"recovered": True}
"""


def test_success_after_a_retry_counts_both_invocations(aserver: FireboxServer, lam: Any, logs: Any, sink: str) -> None:
    """Fails on its first attempt (per warm sandbox), succeeds on a retry: the Success record's
    approximateInvokeCount is the number of invocations the event took."""
    from tests.e2e.helpers import create_active, make_zip

    from .support import runs

    name = unique_name("flaky")
    create_active(lam, name, zip_bytes=make_zip({"app.py": FLAKY_SOURCE}))
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=2,
                                         DestinationConfig={"OnSuccess": {"Destination": function_arn(sink)}})
    request_id = send_event(lam, name, {"flaky": True})
    [record] = wait_sink(logs, sink, request_id)
    ran = [r for r in runs(logs, name) if r.request_id == request_id]
    _check_envelope(record, request_id, function_arn(name, "$LATEST"), "Success", len(ran))
    assert len(ran) >= 2, ran
    assert record["responsePayload"] == {"recovered": True}, record


def test_failed_event_goes_to_both_on_failure_and_dead_letter(
    aserver: FireboxServer, lam: Any, logs: Any, barrier: LogBarrier
) -> None:
    destination, dead_letters = create_sink(lam), create_sink(lam)
    name = create_worker(lam, mode="raise", DeadLetterConfig={"TargetArn": function_arn(dead_letters)})
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0,
                                         DestinationConfig={"OnFailure": {"Destination": function_arn(destination)}})
    event = {"both": True}
    request_id = send_event(lam, name, event)
    [record] = wait_sink(logs, destination, request_id)
    _check_envelope(record, request_id, function_arn(name, "$LATEST"), "RetriesExhausted", 1)
    assert wait_sink(logs, dead_letters) == [event]


def test_event_for_a_version_runs_that_version(aserver: FireboxServer, lam: Any, logs: Any, sink: str) -> None:
    name = create_worker(lam)
    lam.publish_version(FunctionName=name)
    lam.update_function_configuration(FunctionName=name, Environment={"Variables": {"MODE": "raise"}})
    from tests.e2e.helpers import wait_active

    wait_active(lam, name)
    lam.put_function_event_invoke_config(FunctionName=name, Qualifier="1",
                                         DestinationConfig={"OnSuccess": {"Destination": function_arn(sink)}})
    request_id = send_event(lam, name, {"v": 1}, qualifier="1")
    [record] = wait_sink(logs, sink, request_id)
    _check_envelope(record, request_id, function_arn(name, "1"), "Success", 1)
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "1"}, record
