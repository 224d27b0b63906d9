"""Reserved concurrency (Put/Get/DeleteFunctionConcurrency), GetAccountSettings, tags
(TagResource, UntagResource, ListTags) and the account id / region a server mints ARNs in.

Tests that look at account-wide numbers run on a fresh server of their own (`server_factory`),
so what other tests reserved or created does not count."""

from __future__ import annotations

from typing import Any

from .helpers import (
    code_sha256,
    create_active,
    create_function,
    function_arn,
    handler_zip,
    not_found_message,
    raises_aws,
    unique_name,
)

BELOW_MINIMUM = (
    "Specified ReservedConcurrentExecutions for function decreases account's UnreservedConcurrentExecution "
    "below its minimum value of [100]."
)


def account(lam: Any) -> dict[str, Any]:
    return lam.get_account_settings()


def reserved(lam: Any, name: str) -> int | None:
    return lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")


# -- reserved concurrency ---------------------------------------------------------------------


def test_put_get_delete_function_concurrency(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name)
    none_set = lam.get_function_concurrency(FunctionName=fn_name)
    assert none_set["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert "ReservedConcurrentExecutions" not in none_set

    put = lam.put_function_concurrency(FunctionName=fn_name, ReservedConcurrentExecutions=5)
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert put["ReservedConcurrentExecutions"] == 5
    assert reserved(lam, fn_name) == 5
    assert reserved(lam, function_arn(fn_name)) == 5

    # Zero is legal: it stops the function from running at all.
    assert lam.put_function_concurrency(FunctionName=fn_name, ReservedConcurrentExecutions=0)["ReservedConcurrentExecutions"] == 0
    assert reserved(lam, fn_name) == 0

    deleted = lam.delete_function_concurrency(FunctionName=fn_name)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert reserved(lam, fn_name) is None


def test_concurrency_of_missing_function_is_not_found(lam: Any, fn_name: str) -> None:
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name)):
        lam.put_function_concurrency(FunctionName=fn_name, ReservedConcurrentExecutions=1)
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name)):
        lam.get_function_concurrency(FunctionName=fn_name)
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name)):
        lam.delete_function_concurrency(FunctionName=fn_name)


def test_negative_reserved_concurrency_is_invalid(raw_lam: Any, fn_name: str) -> None:
    create_active(raw_lam, fn_name)
    with raises_aws("ValidationException", 400,
                    contains="Value '-1' at 'reservedConcurrentExecutions' failed to satisfy constraint: "
                             "Member must have value greater than or equal to 0"):
        raw_lam.put_function_concurrency(FunctionName=fn_name, ReservedConcurrentExecutions=-1)
    assert reserved(raw_lam, fn_name) is None


def test_reservations_must_leave_100_unreserved(server_factory: Any) -> None:
    lam = server_factory().client()
    first, second = unique_name(), unique_name()
    create_active(lam, first)
    create_active(lam, second)

    with raises_aws("InvalidParameterValueException", 400, message=BELOW_MINIMUM):
        lam.put_function_concurrency(FunctionName=first, ReservedConcurrentExecutions=901)
    assert reserved(lam, first) is None
    assert account(lam)["AccountLimit"]["UnreservedConcurrentExecutions"] == 1000

    assert lam.put_function_concurrency(FunctionName=first, ReservedConcurrentExecutions=900)["ReservedConcurrentExecutions"] == 900
    assert account(lam)["AccountLimit"]["UnreservedConcurrentExecutions"] == 100
    with raises_aws("InvalidParameterValueException", 400, message=BELOW_MINIMUM):
        lam.put_function_concurrency(FunctionName=second, ReservedConcurrentExecutions=1)
    assert reserved(lam, second) is None
    # A function's own reservation is replaced, not added to.
    lam.put_function_concurrency(FunctionName=first, ReservedConcurrentExecutions=900)
    lam.put_function_concurrency(FunctionName=first, ReservedConcurrentExecutions=500)
    lam.put_function_concurrency(FunctionName=second, ReservedConcurrentExecutions=400)
    assert account(lam)["AccountLimit"]["UnreservedConcurrentExecutions"] == 100


def test_two_functions_450_and_451(server_factory: Any) -> None:
    lam = server_factory().client()
    a, b = unique_name(), unique_name()
    create_active(lam, a)
    create_active(lam, b)
    lam.put_function_concurrency(FunctionName=a, ReservedConcurrentExecutions=450)
    with raises_aws("InvalidParameterValueException", 400, message=BELOW_MINIMUM):
        lam.put_function_concurrency(FunctionName=b, ReservedConcurrentExecutions=451)
    assert (reserved(lam, a), reserved(lam, b)) == (450, None)
    assert account(lam)["AccountLimit"]["UnreservedConcurrentExecutions"] == 550
    lam.put_function_concurrency(FunctionName=b, ReservedConcurrentExecutions=450)
    assert account(lam)["AccountLimit"]["UnreservedConcurrentExecutions"] == 100


def test_account_settings_count_functions_code_and_reservations(server_factory: Any) -> None:
    lam = server_factory().client()
    fresh = account(lam)
    assert fresh["ResponseMetadata"]["HTTPStatusCode"] == 200
    limit = fresh["AccountLimit"]
    assert limit["ConcurrentExecutions"] == 1000
    assert limit["UnreservedConcurrentExecutions"] == 1000
    assert limit["CodeSizeZipped"] == 52_428_800
    assert limit["CodeSizeUnzipped"] == 262_144_000
    assert limit["TotalCodeSize"] == 80_530_636_800
    assert fresh["AccountUsage"] == {"TotalCodeSize": 0, "FunctionCount": 0}

    a, b = unique_name(), unique_name()
    zip_a, zip_b = handler_zip("a"), handler_zip("bb")
    create_active(lam, a, zip_bytes=zip_a)
    create_active(lam, b, zip_bytes=zip_b)
    usage = account(lam)["AccountUsage"]
    assert usage["FunctionCount"] == 2
    assert usage["TotalCodeSize"] == len(zip_a) + len(zip_b)
    lam.publish_version(FunctionName=a)
    assert account(lam)["AccountUsage"]["FunctionCount"] == 2, "versions are not functions"

    lam.put_function_concurrency(FunctionName=a, ReservedConcurrentExecutions=100)
    lam.put_function_concurrency(FunctionName=b, ReservedConcurrentExecutions=50)
    assert account(lam)["AccountLimit"]["UnreservedConcurrentExecutions"] == 850
    lam.delete_function_concurrency(FunctionName=b)
    assert account(lam)["AccountLimit"]["UnreservedConcurrentExecutions"] == 900
    # Deleting a function gives its reservation back.
    lam.delete_function(FunctionName=a)
    settings = account(lam)
    assert settings["AccountLimit"]["UnreservedConcurrentExecutions"] == 1000
    assert settings["AccountUsage"] == {"TotalCodeSize": len(zip_b), "FunctionCount": 1}


# -- tags -------------------------------------------------------------------------------------


def test_tag_untag_list(lam: Any, fn_name: str) -> None:
    arn = create_active(lam, fn_name)["FunctionArn"]
    assert lam.list_tags(Resource=arn)["Tags"] == {}
    tagged = lam.tag_resource(Resource=arn, Tags={"team": "platform", "env": "dev"})
    assert tagged["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert lam.list_tags(Resource=arn)["Tags"] == {"team": "platform", "env": "dev"}
    lam.tag_resource(Resource=arn, Tags={"env": "prod", "owner": "me"})  # merges, overwrites env
    assert lam.list_tags(Resource=arn)["Tags"] == {"team": "platform", "env": "prod", "owner": "me"}
    assert lam.get_function(FunctionName=fn_name)["Tags"] == {"team": "platform", "env": "prod", "owner": "me"}
    untagged = lam.untag_resource(Resource=arn, TagKeys=["team", "not-there"])
    assert untagged["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert lam.list_tags(Resource=arn)["Tags"] == {"env": "prod", "owner": "me"}
    lam.untag_resource(Resource=arn, TagKeys=["env", "owner"])
    assert lam.list_tags(Resource=arn)["Tags"] == {}
    assert "Tags" not in lam.get_function(FunctionName=fn_name)


def test_tags_on_a_qualified_arn_are_invalid(lam: Any, fn_name: str) -> None:
    arn = create_active(lam, fn_name, Tags={"keep": "me"})["FunctionArn"]
    lam.publish_version(FunctionName=fn_name)
    lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="1")
    for qualified in (f"{arn}:1", f"{arn}:live", f"{arn}:$LATEST"):
        with raises_aws("InvalidParameterValueException", 400):
            lam.tag_resource(Resource=qualified, Tags={"new": "tag"})
        with raises_aws("InvalidParameterValueException", 400):
            lam.untag_resource(Resource=qualified, TagKeys=["keep"])
        with raises_aws("InvalidParameterValueException", 400):
            lam.list_tags(Resource=qualified)
    assert lam.list_tags(Resource=arn)["Tags"] == {"keep": "me"}


def test_tags_of_unknown_function_are_not_found(lam: Any, fn_name: str) -> None:
    arn = function_arn(fn_name)
    with raises_aws("ResourceNotFoundException", 404, contains=arn):
        lam.tag_resource(Resource=arn, Tags={"a": "b"})
    with raises_aws("ResourceNotFoundException", 404, contains=arn):
        lam.untag_resource(Resource=arn, TagKeys=["a"])
    with raises_aws("ResourceNotFoundException", 404, contains=arn):
        lam.list_tags(Resource=arn)
    with raises_aws("ResourceNotFoundException", 404):
        lam.get_function(FunctionName=fn_name)


def test_tags_do_not_outlive_their_function(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name, Tags={"old": "tag"})
    lam.delete_function(FunctionName=fn_name)
    arn = create_active(lam, fn_name)["FunctionArn"]
    assert lam.list_tags(Resource=arn)["Tags"] == {}


# -- account id and region ----------------------------------------------------------------------


def test_custom_account_and_region_appear_in_arns_and_errors(server_factory: Any) -> None:
    srv = server_factory(env={"FIREBOX_ACCOUNT_ID": "123456789012", "FIREBOX_REGION": "eu-west-1"})
    lam = srv.client()
    where = {"account": "123456789012", "region": "eu-west-1"}
    name = unique_name()
    created = create_function(lam, name)
    assert created["FunctionArn"] == f"arn:aws:lambda:eu-west-1:123456789012:function:{name}"
    assert created["LoggingConfig"]["LogGroup"] == f"/aws/lambda/{name}"
    lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.05, "MaxAttempts": 200})
    for spelling in (function_arn(name, **where), f"123456789012:function:{name}"):
        assert lam.get_function_configuration(FunctionName=spelling)["FunctionArn"] == function_arn(name, **where)
    version = lam.publish_version(FunctionName=name)
    assert version["FunctionArn"] == function_arn(name, "1", **where)
    alias = lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
    assert alias["AliasArn"] == function_arn(name, "live", **where)
    missing = unique_name()
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(missing, **where)):
        lam.get_function(FunctionName=missing)
    assert account(lam)["AccountUsage"]["FunctionCount"] == 1
    assert version["CodeSha256"] == code_sha256(handler_zip())
