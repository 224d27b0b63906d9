"""Versions (PublishVersion, ListVersionsByFunction, DeleteFunction with a qualifier) and aliases
(Create/Get/Update/Delete/ListAliases, routing configuration)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from .helpers import (
    code_sha256,
    create_active,
    function_arn,
    handler_zip,
    not_found_message,
    raises_aws,
    strip_meta,
    wait_active,
)

STALE_REVISION = (
    "The Revision Id provided does not match the latest Revision Id. "
    "Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
)


def change_code(lam: Any, name: str, marker: str) -> dict[str, Any]:
    lam.update_function_code(FunctionName=name, ZipFile=handler_zip(marker))
    return wait_active(lam, name)


def versions_of(lam: Any, name: str) -> list[str]:
    return [
        v["Version"]
        for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName=name)
        for v in page["Versions"]
    ]


# -- PublishVersion ---------------------------------------------------------------------------


def test_publish_version_numbers_from_1_and_is_idempotent(lam: Any, fn_name: str) -> None:
    latest = create_active(lam, fn_name, zip_bytes=handler_zip("one"), Description="first")
    v1 = lam.publish_version(FunctionName=fn_name)
    assert v1["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert v1["Version"] == "1"
    assert v1["FunctionArn"] == function_arn(fn_name, "1")
    assert v1["CodeSha256"] == latest["CodeSha256"]
    assert v1["Description"] == "first"

    again = lam.publish_version(FunctionName=fn_name)
    assert again["Version"] == "1", "publishing an unchanged $LATEST returns the latest version"
    assert again["RevisionId"] == v1["RevisionId"]
    assert versions_of(lam, fn_name) == ["$LATEST", "1"]

    change_code(lam, fn_name, "two")
    v2 = lam.publish_version(FunctionName=fn_name, Description="second release")
    assert v2["Version"] == "2"
    assert v2["Description"] == "second release"
    assert v2["CodeSha256"] == code_sha256(handler_zip("two"))
    # A configuration change alone is a change too.
    lam.update_function_configuration(FunctionName=fn_name, Timeout=10)
    wait_active(lam, fn_name)
    v3 = lam.publish_version(FunctionName=fn_name)
    assert (v3["Version"], v3["Timeout"]) == ("3", 10)
    assert versions_of(lam, fn_name) == ["$LATEST", "1", "2", "3"]


def test_published_versions_are_immutable(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name, zip_bytes=handler_zip("frozen"), Environment={"Variables": {"STAGE": "one"}})
    v1 = strip_meta(lam.publish_version(FunctionName=fn_name))
    lam.update_function_configuration(FunctionName=fn_name, Description="changed", Timeout=99,
                                      Environment={"Variables": {"STAGE": "two"}})
    wait_active(lam, fn_name)
    change_code(lam, fn_name, "thawed")
    latest = lam.get_function_configuration(FunctionName=fn_name)
    assert (latest["Description"], latest["Timeout"]) == ("changed", 99)
    assert strip_meta(lam.get_function_configuration(FunctionName=fn_name, Qualifier="1")) == v1
    got = lam.get_function(FunctionName=fn_name, Qualifier="1")
    assert got["Configuration"]["CodeSha256"] == code_sha256(handler_zip("frozen"))
    assert got["Configuration"]["Environment"] == {"Variables": {"STAGE": "one"}}
    # A version cannot be changed through the update APIs either (refused as a bad parameter).
    with pytest.raises(ClientError) as refused:
        lam.update_function_configuration(FunctionName=f"{fn_name}:1", Timeout=5)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.response["Error"]["Code"] in ("InvalidParameterValueException", "ValidationException")
    assert strip_meta(lam.get_function_configuration(FunctionName=fn_name, Qualifier="1")) == v1


def test_publish_with_wrong_code_sha256_fails(lam: Any, fn_name: str) -> None:
    """AWS answers a CodeSha256 that is not $LATEST's with InvalidParameterValueException (400):
    "CodeSHA256 (<given>) is different from current CodeSHA256 in $LATEST (<current>). Please try
    again with the CodeSHA256 in $LATEST." (LocalStack's AWS-validated snapshots agree)."""
    latest = create_active(lam, fn_name)
    wrong = code_sha256(b"something else")
    with raises_aws("InvalidParameterValueException", 400,
                    contains=(f"CodeSHA256 ({wrong}) is different from current CodeSHA256 in $LATEST",
                              latest["CodeSha256"])):
        lam.publish_version(FunctionName=fn_name, CodeSha256=wrong)
    assert versions_of(lam, fn_name) == ["$LATEST"]
    assert lam.get_function_configuration(FunctionName=fn_name)["RevisionId"] == latest["RevisionId"]
    assert lam.publish_version(FunctionName=fn_name, CodeSha256=latest["CodeSha256"])["Version"] == "1"


def test_publish_with_stale_revision_fails(lam: Any, fn_name: str) -> None:
    latest = create_active(lam, fn_name)
    change_code(lam, fn_name, "newer")
    with raises_aws("PreconditionFailedException", 412, message=STALE_REVISION):
        lam.publish_version(FunctionName=fn_name, RevisionId=latest["RevisionId"])
    assert versions_of(lam, fn_name) == ["$LATEST"]


def test_publish_version_of_missing_function_is_not_found(lam: Any, fn_name: str) -> None:
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name)):
        lam.publish_version(FunctionName=fn_name)


# -- ListVersionsByFunction -------------------------------------------------------------------


def test_list_versions_latest_first_then_ascending_with_pagination(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name, zip_bytes=handler_zip("0"))
    for i in range(1, 12):  # 11 versions: "10" and "11" must sort after "9"
        lam.publish_version(FunctionName=fn_name)
        change_code(lam, fn_name, str(i))
    expected = ["$LATEST"] + [str(i) for i in range(1, 12)]

    full = lam.list_versions_by_function(FunctionName=fn_name)
    assert [v["Version"] for v in full["Versions"]] == expected
    assert "NextMarker" not in full
    assert full["Versions"][0]["FunctionArn"] == function_arn(fn_name, "$LATEST")
    assert full["Versions"][3]["FunctionArn"] == function_arn(fn_name, "3")
    assert full["Versions"][3]["CodeSha256"] == code_sha256(handler_zip("2"))

    seen: list[str] = []
    marker = None
    for _ in range(20):
        kwargs = {"Marker": marker} if marker else {}
        page = lam.list_versions_by_function(FunctionName=fn_name, MaxItems=5, **kwargs)
        assert 1 <= len(page["Versions"]) <= 5
        seen += [v["Version"] for v in page["Versions"]]
        marker = page.get("NextMarker")
        if not marker:
            break
    assert seen == expected
    assert versions_of(lam, fn_name) == expected


def test_list_versions_returns_at_most_50_per_page(lam: Any, fn_name: str) -> None:
    """The model: "ListVersionsByFunction returns a maximum of 50 items in each response, even if
    you set the number higher"."""
    create_active(lam, fn_name, zip_bytes=handler_zip("0"))
    for i in range(1, 51):
        assert lam.update_function_code(FunctionName=fn_name, ZipFile=handler_zip(str(i)), Publish=True)["Version"] == str(i)
        wait_active(lam, fn_name)
    first = lam.list_versions_by_function(FunctionName=fn_name, MaxItems=100)  # $LATEST + 50 versions
    assert len(first["Versions"]) == 50
    assert first.get("NextMarker")
    second = lam.list_versions_by_function(FunctionName=fn_name, MaxItems=100, Marker=first["NextMarker"])
    assert [v["Version"] for v in second["Versions"]] == ["50"]
    assert "NextMarker" not in second


# -- DeleteFunction with a qualifier ----------------------------------------------------------


def test_delete_one_version_keeps_the_others(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name, zip_bytes=handler_zip("1"))
    lam.publish_version(FunctionName=fn_name)
    change_code(lam, fn_name, "2")
    lam.publish_version(FunctionName=fn_name)
    response = lam.delete_function(FunctionName=fn_name, Qualifier="1")
    assert response["ResponseMetadata"]["HTTPStatusCode"] in (200, 204)  # 204 per LAMBDA.md, 200 per the model
    assert versions_of(lam, fn_name) == ["$LATEST", "2"]
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name, "1")):
        lam.get_function_configuration(FunctionName=fn_name, Qualifier="1")
    assert lam.get_function_configuration(FunctionName=fn_name, Qualifier="2")["Version"] == "2"
    assert lam.get_function_configuration(FunctionName=fn_name)["Version"] == "$LATEST"
    # Also by qualified name.
    lam.delete_function(FunctionName=f"{fn_name}:2")
    assert versions_of(lam, fn_name) == ["$LATEST"]
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name, "2")):
        lam.delete_function(FunctionName=fn_name, Qualifier="2")


def test_latest_cannot_be_deleted_as_a_version(lam: Any, fn_name: str) -> None:
    latest = create_active(lam, fn_name)
    with raises_aws("InvalidParameterValueException", 400,
                    message="$LATEST version cannot be deleted without deleting the function."):
        lam.delete_function(FunctionName=fn_name, Qualifier="$LATEST")
    assert lam.get_function_configuration(FunctionName=fn_name)["RevisionId"] == latest["RevisionId"]


def test_version_numbers_are_not_reused(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name, zip_bytes=handler_zip("1"))
    lam.publish_version(FunctionName=fn_name)
    change_code(lam, fn_name, "2")
    assert lam.publish_version(FunctionName=fn_name)["Version"] == "2"
    lam.delete_function(FunctionName=fn_name, Qualifier="2")
    # $LATEST is unchanged since version 2 was cut, but version 2 is gone: a new number.
    v3 = lam.publish_version(FunctionName=fn_name)
    assert v3["Version"] == "3"
    assert v3["CodeSha256"] == code_sha256(handler_zip("2"))
    assert versions_of(lam, fn_name) == ["$LATEST", "1", "3"]


def test_version_used_by_an_alias_cannot_be_deleted(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name, zip_bytes=handler_zip("1"))
    lam.publish_version(FunctionName=fn_name)
    change_code(lam, fn_name, "2")
    lam.publish_version(FunctionName=fn_name)
    lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="2")
    lam.create_alias(FunctionName=fn_name, Name="canary", FunctionVersion="2",
                     RoutingConfig={"AdditionalVersionWeights": {"1": 0.1}})
    with raises_aws("ResourceConflictException", 409, contains=function_arn(fn_name, "live")):
        lam.delete_function(FunctionName=fn_name, Qualifier="2")
    # Weighted routing uses version 1: it is in use too.
    with raises_aws("ResourceConflictException", 409, contains=function_arn(fn_name, "canary")):
        lam.delete_function(FunctionName=fn_name, Qualifier="1")
    assert versions_of(lam, fn_name) == ["$LATEST", "1", "2"]
    lam.delete_alias(FunctionName=fn_name, Name="canary")
    lam.delete_function(FunctionName=fn_name, Qualifier="1")
    assert versions_of(lam, fn_name) == ["$LATEST", "2"]


# -- aliases ----------------------------------------------------------------------------------


def two_versions(lam: Any, name: str) -> None:
    create_active(lam, name, zip_bytes=handler_zip("1"), Description="v1")
    lam.publish_version(FunctionName=name)
    lam.update_function_configuration(FunctionName=name, Description="v2")
    wait_active(lam, name)
    change_code(lam, name, "2")
    lam.publish_version(FunctionName=name)


def test_alias_lifecycle(lam: Any, fn_name: str) -> None:
    two_versions(lam, fn_name)
    created = lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="1", Description="prod")
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["AliasArn"] == function_arn(fn_name, "live")
    assert (created["Name"], created["FunctionVersion"], created["Description"]) == ("live", "1", "prod")
    assert "RoutingConfig" not in created or created["RoutingConfig"] == {"AdditionalVersionWeights": {}}
    assert strip_meta(lam.get_alias(FunctionName=fn_name, Name="live")) == strip_meta(created)

    updated = lam.update_alias(FunctionName=fn_name, Name="live", FunctionVersion="2")
    assert updated["FunctionVersion"] == "2"
    assert updated["Description"] == "prod", "UpdateAlias keeps what it is not given"
    assert updated["RevisionId"] != created["RevisionId"]
    assert strip_meta(lam.get_alias(FunctionName=fn_name, Name="live")) == strip_meta(updated)

    lam.create_alias(FunctionName=fn_name, Name="beta", FunctionVersion="$LATEST")
    listed = lam.list_aliases(FunctionName=fn_name)["Aliases"]
    assert sorted(a["Name"] for a in listed) == ["beta", "live"]
    assert {a["Name"]: a["FunctionVersion"] for a in listed} == {"beta": "$LATEST", "live": "2"}

    deleted = lam.delete_alias(FunctionName=fn_name, Name="live")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    with raises_aws("ResourceNotFoundException", 404, contains=function_arn(fn_name, "live")):
        lam.get_alias(FunctionName=fn_name, Name="live")
    assert [a["Name"] for a in lam.list_aliases(FunctionName=fn_name)["Aliases"]] == ["beta"]


def test_alias_name_of_digits_only_is_invalid(raw_lam: Any, fn_name: str) -> None:
    create_active(raw_lam, fn_name)
    raw_lam.publish_version(FunctionName=fn_name)
    with raises_aws("ValidationException", 400,
                    contains=("1 validation error detected: Value '123' at 'name' failed to satisfy constraint",
                              "regular expression pattern")):
        raw_lam.create_alias(FunctionName=fn_name, Name="123", FunctionVersion="1")
    assert raw_lam.list_aliases(FunctionName=fn_name)["Aliases"] == []


def test_duplicate_alias_is_a_conflict(lam: Any, fn_name: str) -> None:
    two_versions(lam, fn_name)
    first = lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="1")
    with raises_aws("ResourceConflictException", 409, contains=function_arn(fn_name, "live")):
        lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="2")
    assert strip_meta(lam.get_alias(FunctionName=fn_name, Name="live")) == strip_meta(first)


def test_alias_to_unknown_version_is_not_found(lam: Any, fn_name: str) -> None:
    two_versions(lam, fn_name)
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name, "9")):
        lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="9")
    assert lam.list_aliases(FunctionName=fn_name)["Aliases"] == []
    lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="1")
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name, "9")):
        lam.update_alias(FunctionName=fn_name, Name="live", FunctionVersion="9")
    assert lam.get_alias(FunctionName=fn_name, Name="live")["FunctionVersion"] == "1"


def test_alias_on_missing_function_is_not_found(lam: Any, fn_name: str) -> None:
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name)):
        lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="1")


def test_routing_config_round_trips(lam: Any, fn_name: str) -> None:
    two_versions(lam, fn_name)
    routing = {"AdditionalVersionWeights": {"1": 0.3}}
    created = lam.create_alias(FunctionName=fn_name, Name="canary", FunctionVersion="2", RoutingConfig=routing)
    assert created["RoutingConfig"] == routing
    assert lam.get_alias(FunctionName=fn_name, Name="canary")["RoutingConfig"] == routing
    assert lam.list_aliases(FunctionName=fn_name)["Aliases"][0]["RoutingConfig"] == routing
    updated = lam.update_alias(FunctionName=fn_name, Name="canary", RoutingConfig={"AdditionalVersionWeights": {"1": 0.05}})
    assert updated["RoutingConfig"] == {"AdditionalVersionWeights": {"1": 0.05}}
    assert updated["FunctionVersion"] == "2"
    # An empty routing configuration removes the split.
    cleared = lam.update_alias(FunctionName=fn_name, Name="canary", RoutingConfig={"AdditionalVersionWeights": {}})
    assert cleared.get("RoutingConfig", {}).get("AdditionalVersionWeights", {}) == {}


def test_routing_weight_out_of_range_is_rejected(raw_lam: Any, fn_name: str) -> None:
    two_versions(raw_lam, fn_name)
    with raises_aws("ValidationException", 400, contains="additionalVersionWeights"):
        raw_lam.create_alias(FunctionName=fn_name, Name="canary", FunctionVersion="2",
                             RoutingConfig={"AdditionalVersionWeights": {"1": 1.5}})
    assert raw_lam.list_aliases(FunctionName=fn_name)["Aliases"] == []
    alias = raw_lam.create_alias(FunctionName=fn_name, Name="canary", FunctionVersion="2")
    with raises_aws("ValidationException", 400, contains="additionalVersionWeights"):
        raw_lam.update_alias(FunctionName=fn_name, Name="canary", RoutingConfig={"AdditionalVersionWeights": {"1": -0.1}})
    assert strip_meta(raw_lam.get_alias(FunctionName=fn_name, Name="canary")) == strip_meta(alias)


def test_update_alias_with_stale_revision_fails(lam: Any, fn_name: str) -> None:
    two_versions(lam, fn_name)
    created = lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="1")
    current = lam.update_alias(FunctionName=fn_name, Name="live", Description="moved on")
    with raises_aws("PreconditionFailedException", 412, message=STALE_REVISION):
        lam.update_alias(FunctionName=fn_name, Name="live", FunctionVersion="2", RevisionId=created["RevisionId"])
    assert strip_meta(lam.get_alias(FunctionName=fn_name, Name="live")) == strip_meta(current)
    ok = lam.update_alias(FunctionName=fn_name, Name="live", FunctionVersion="2", RevisionId=current["RevisionId"])
    assert ok["FunctionVersion"] == "2"


def test_function_configuration_through_an_alias(lam: Any, fn_name: str) -> None:
    two_versions(lam, fn_name)
    lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="1")
    v1 = lam.get_function_configuration(FunctionName=fn_name, Qualifier="1")
    for kwargs in ({"FunctionName": fn_name, "Qualifier": "live"}, {"FunctionName": f"{fn_name}:live"},
                   {"FunctionName": function_arn(fn_name, "live")}):
        config = lam.get_function_configuration(**kwargs)
        assert config["FunctionArn"] == function_arn(fn_name, "live"), kwargs
        assert config["Version"] == "1"
        assert config["Description"] == "v1"
        assert config["CodeSha256"] == v1["CodeSha256"]
        assert config["RevisionId"] == v1["RevisionId"]
        full = lam.get_function(**kwargs)
        assert full["Configuration"]["FunctionArn"] == function_arn(fn_name, "live")
        assert full["Configuration"]["Version"] == "1"
    lam.update_alias(FunctionName=fn_name, Name="live", FunctionVersion="2")
    moved = lam.get_function_configuration(FunctionName=fn_name, Qualifier="live")
    assert (moved["Version"], moved["Description"]) == ("2", "v2")


def test_list_aliases_filters_by_version_and_paginates(lam: Any, fn_name: str) -> None:
    two_versions(lam, fn_name)
    targets = {"a-one": "1", "b-two": "2", "c-one": "1", "d-latest": "$LATEST", "e-one": "1"}
    for alias, version in targets.items():
        lam.create_alias(FunctionName=fn_name, Name=alias, FunctionVersion=version)
    ones = lam.list_aliases(FunctionName=fn_name, FunctionVersion="1")["Aliases"]
    assert sorted(a["Name"] for a in ones) == ["a-one", "c-one", "e-one"]
    assert [a["Name"] for a in lam.list_aliases(FunctionName=fn_name, FunctionVersion="2")["Aliases"]] == ["b-two"]

    names = [
        a["Name"]
        for page in lam.get_paginator("list_aliases").paginate(FunctionName=fn_name, PaginationConfig={"PageSize": 2})
        for a in page["Aliases"]
    ]
    assert sorted(names) == sorted(targets) and len(names) == len(targets)
    filtered = [
        a["Name"]
        for page in lam.get_paginator("list_aliases").paginate(
            FunctionName=fn_name, FunctionVersion="1", PaginationConfig={"PageSize": 2}
        )
        for a in page["Aliases"]
    ]
    assert sorted(filtered) == ["a-one", "c-one", "e-one"]
