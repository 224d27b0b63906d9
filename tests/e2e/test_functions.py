"""Functions: CreateFunction, GetFunction(Configuration), ListFunctions, UpdateFunctionCode,
UpdateFunctionConfiguration, DeleteFunction, and the conflicts of the function lifecycle."""

from __future__ import annotations

import re
import urllib.request
import uuid
from typing import Any

from .helpers import (
    ACCOUNT,
    HANDLER,
    ROLE,
    RUNTIME,
    code_sha256,
    create_active,
    create_function,
    function_arn,
    handler_zip,
    make_zip,
    not_found_message,
    raises_aws,
    strip_meta,
    unique_name,
    wait_active,
)

LAST_MODIFIED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000")
STALE_REVISION = (
    "The Revision Id provided does not match the latest Revision Id. "
    "Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
)


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def assert_delete_status(response: dict[str, Any]) -> None:
    """DeleteFunction answered 204 for years (LAMBDA.md); the current service model says 200, with
    the status echoed in the `StatusCode` output member. Either is accepted."""
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    assert status in (200, 204), status
    assert response.get("StatusCode", status) == status


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read()


# -- CreateFunction ---------------------------------------------------------------------------


def test_create_function_answers_201_with_every_default(lam: Any, fn_name: str) -> None:
    zip_bytes = handler_zip("defaults")
    response = create_function(lam, fn_name, zip_bytes=zip_bytes)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert response["FunctionName"] == fn_name
    assert response["FunctionArn"] == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{fn_name}"
    assert response["Runtime"] == RUNTIME
    assert response["Role"] == ROLE
    assert response["Handler"] == HANDLER
    assert response["Timeout"] == 3
    assert response["MemorySize"] == 128
    assert response["EphemeralStorage"] == {"Size": 512}
    assert response["Architectures"] == ["x86_64"]
    assert response["PackageType"] == "Zip"
    assert response["TracingConfig"] == {"Mode": "PassThrough"}
    assert response["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": f"/aws/lambda/{fn_name}"}
    assert response["Description"] == ""
    assert response["Version"] == "$LATEST"
    assert response["CodeSha256"] == code_sha256(zip_bytes)
    assert response["CodeSize"] == len(zip_bytes)
    assert LAST_MODIFIED.fullmatch(response["LastModified"]), response["LastModified"]
    assert "Environment" not in response
    assert response["State"] == "Pending"
    assert "LastUpdateStatus" not in response or response["LastUpdateStatus"] == "InProgress"
    assert is_uuid(response["RevisionId"]), response["RevisionId"]


def test_new_function_goes_from_pending_to_active_with_a_new_revision(lam: Any, fn_name: str) -> None:
    created = create_function(lam, fn_name)
    assert created["State"] == "Pending"
    active = wait_active(lam, fn_name)
    assert active["State"] == "Active"
    assert active["LastUpdateStatus"] == "Successful"
    assert is_uuid(active["RevisionId"])
    assert active["RevisionId"] != created["RevisionId"]
    assert active["CodeSha256"] == created["CodeSha256"]
    # Nothing else moved on the way.
    for key in ("FunctionArn", "Runtime", "Handler", "Timeout", "MemorySize", "LastModified", "CodeSize"):
        assert active[key] == created[key], key


def test_environment_round_trips(lam: Any, fn_name: str) -> None:
    variables = {"GREETING": "hello", "EMPTY": "", "UNICODE": "caf\u00e9 \u2603", "JSONISH": '{"a": [1, 2]}'}
    created = create_function(lam, fn_name, Environment={"Variables": variables})
    assert created["Environment"] == {"Variables": variables}
    assert wait_active(lam, fn_name)["Environment"] == {"Variables": variables}
    assert lam.get_function(FunctionName=fn_name)["Configuration"]["Environment"] == {"Variables": variables}


def test_tags_given_at_create_appear_in_get_function_and_list_tags(lam: Any, fn_name: str) -> None:
    tags = {"team": "platform", "cost-center": "42"}
    create_function(lam, fn_name, Tags=tags)
    wait_active(lam, fn_name)
    assert lam.get_function(FunctionName=fn_name)["Tags"] == tags
    assert lam.list_tags(Resource=function_arn(fn_name))["Tags"] == tags


def test_create_with_publish_returns_version_1(lam: Any, fn_name: str) -> None:
    created = create_function(lam, fn_name, Publish=True)
    assert created["Version"] == "1"
    assert created["FunctionArn"] == function_arn(fn_name, "1")
    wait_active(lam, fn_name)
    version = lam.get_function_configuration(FunctionName=fn_name, Qualifier="1")
    assert version["Version"] == "1"
    assert version["CodeSha256"] == created["CodeSha256"]
    listed = [v["Version"] for v in lam.list_versions_by_function(FunctionName=fn_name)["Versions"]]
    assert listed == ["$LATEST", "1"]


def test_create_twice_is_a_conflict_and_keeps_the_first(lam: Any, fn_name: str) -> None:
    first = create_active(lam, fn_name, zip_bytes=handler_zip("first"))
    with raises_aws("ResourceConflictException", 409, contains=fn_name):
        create_function(lam, fn_name, zip_bytes=handler_zip("second"), Description="second")
    after = lam.get_function_configuration(FunctionName=fn_name)
    assert after["CodeSha256"] == first["CodeSha256"]
    assert after["RevisionId"] == first["RevisionId"]
    assert after["Description"] == ""


# -- GetFunction ------------------------------------------------------------------------------


def test_get_function_has_configuration_and_downloadable_code(lam: Any, fn_name: str) -> None:
    zip_bytes = make_zip({"app.py": "def handler(e, c):\n    return 1\n", "lib/data.bin": bytes(range(256))})
    config = create_active(lam, fn_name, zip_bytes=zip_bytes)
    response = lam.get_function(FunctionName=fn_name)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["Configuration"] == strip_meta(config)
    assert response["Code"]["RepositoryType"] == "S3"
    assert download(response["Code"]["Location"]) == zip_bytes
    assert "Concurrency" not in response
    assert "Tags" not in response


def test_get_function_shows_reserved_concurrency(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name)
    lam.put_function_concurrency(FunctionName=fn_name, ReservedConcurrentExecutions=1)
    try:
        assert lam.get_function(FunctionName=fn_name)["Concurrency"] == {"ReservedConcurrentExecutions": 1}
    finally:
        lam.delete_function_concurrency(FunctionName=fn_name)
    assert "Concurrency" not in lam.get_function(FunctionName=fn_name)


def test_function_can_be_named_by_name_partial_arn_and_full_arn(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name, zip_bytes=handler_zip("v1"))
    v1 = lam.publish_version(FunctionName=fn_name)
    lam.update_function_configuration(FunctionName=fn_name, Description="latest")
    latest = wait_active(lam, fn_name)

    for spelling in (fn_name, f"{ACCOUNT}:function:{fn_name}", function_arn(fn_name)):
        got = lam.get_function_configuration(FunctionName=spelling)
        assert (got["Version"], got["Description"], got["FunctionArn"]) == ("$LATEST", "latest", function_arn(fn_name))
        assert lam.get_function(FunctionName=spelling)["Configuration"]["RevisionId"] == latest["RevisionId"]

    for spelling, qualifier in (
        (f"{fn_name}:1", None),
        (f"{ACCOUNT}:function:{fn_name}:1", None),
        (function_arn(fn_name, "1"), None),
        (fn_name, "1"),
        (f"{fn_name}:1", "1"),  # the same qualifier twice is fine
    ):
        kwargs = {"Qualifier": qualifier} if qualifier else {}
        got = lam.get_function_configuration(FunctionName=spelling, **kwargs)
        assert (got["Version"], got["Description"], got["FunctionArn"]) == ("1", "", function_arn(fn_name, "1")), spelling
        assert got["RevisionId"] == v1["RevisionId"]
        full = lam.get_function(FunctionName=spelling, **kwargs)["Configuration"]
        assert full["Version"] == "1" and full["FunctionArn"] == function_arn(fn_name, "1")

    got = lam.get_function_configuration(FunctionName=fn_name, Qualifier="$LATEST")
    assert (got["Version"], got["Description"]) == ("$LATEST", "latest")


def test_qualifier_in_name_that_disagrees_with_qualifier_param_is_rejected(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name)
    lam.publish_version(FunctionName=fn_name)
    message = "The derived qualifier from the function name does not match the specified qualifier."
    with raises_aws("InvalidParameterValueException", 400, message=message):
        lam.get_function(FunctionName=f"{fn_name}:1", Qualifier="$LATEST")
    with raises_aws("InvalidParameterValueException", 400, message=message):
        lam.get_function_configuration(FunctionName=function_arn(fn_name, "1"), Qualifier="2")


def test_unknown_version_or_alias_is_not_found(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name)
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name, "7")):
        lam.get_function(FunctionName=fn_name, Qualifier="7")
    with raises_aws("ResourceNotFoundException", 404, contains=function_arn(fn_name, "nosuchalias")):
        lam.get_function_configuration(FunctionName=f"{fn_name}:nosuchalias")


# -- ListFunctions ----------------------------------------------------------------------------


def test_list_functions_paginates_by_marker_and_paginator(server_factory: Any) -> None:
    lam = server_factory().client()
    names = sorted(unique_name("list") for _ in range(5))
    for name in names:
        create_function(lam, name)
    seen: list[str] = []
    pages = 0
    marker = None
    while True:
        kwargs = {"Marker": marker} if marker else {}
        page = lam.list_functions(MaxItems=2, **kwargs)
        pages += 1
        assert 1 <= len(page["Functions"]) <= 2
        seen += [f["FunctionName"] for f in page["Functions"]]
        marker = page.get("NextMarker")
        if not marker:
            break
        assert pages < 10, "pagination does not end"
    assert pages == 3
    assert sorted(seen) == names and len(seen) == len(set(seen))

    paginated = [
        f["FunctionName"]
        for page in lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 2})
        for f in page["Functions"]
    ]
    assert sorted(paginated) == names and len(paginated) == 5
    # MaxItems on the paginator: stops after 3 items and resumes from its token.
    first = lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 2, "MaxItems": 3}).build_full_result()
    rest = lam.get_paginator("list_functions").paginate(
        PaginationConfig={"PageSize": 2, "StartingToken": first["NextToken"]}
    ).build_full_result()
    resumed = [f["FunctionName"] for f in first["Functions"] + rest["Functions"]]
    assert sorted(resumed) == names and len(resumed) == 5


def test_list_functions_returns_at_most_50_per_page(server_factory: Any) -> None:
    """The model: "ListFunctions returns a maximum of 50 items in each response, even if you set
    the number higher"."""
    lam = server_factory().client()
    names = sorted(unique_name("many") for _ in range(51))
    for name in names:
        create_function(lam, name)
    first = lam.list_functions(MaxItems=100)
    assert len(first["Functions"]) == 50
    assert first.get("NextMarker")
    second = lam.list_functions(MaxItems=100, Marker=first["NextMarker"])
    assert len(second["Functions"]) == 1 and "NextMarker" not in second
    assert sorted(f["FunctionName"] for f in first["Functions"] + second["Functions"]) == names


def test_list_functions_items_have_no_state(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name)
    listed = [
        f for page in lam.get_paginator("list_functions").paginate() for f in page["Functions"]
        if f["FunctionName"] == fn_name
    ]
    assert len(listed) == 1
    item = listed[0]
    for key in ("State", "StateReason", "StateReasonCode", "LastUpdateStatus"):
        assert key not in item, key
    assert item["FunctionArn"] == function_arn(fn_name)
    assert item["Version"] == "$LATEST"


def test_list_functions_all_versions(server_factory: Any) -> None:
    lam = server_factory().client()
    a, b = sorted(unique_name("all") for _ in range(2))
    create_active(lam, a, zip_bytes=handler_zip("a1"))
    lam.publish_version(FunctionName=a)
    lam.update_function_code(FunctionName=a, ZipFile=handler_zip("a2"))
    wait_active(lam, a)
    lam.publish_version(FunctionName=a)
    create_active(lam, b)

    default = [(f["FunctionName"], f["Version"]) for f in lam.list_functions()["Functions"]]
    assert sorted(default) == [(a, "$LATEST"), (b, "$LATEST")]

    everything = [
        (f["FunctionName"], f["Version"])
        for page in lam.get_paginator("list_functions").paginate(
            FunctionVersion="ALL", PaginationConfig={"PageSize": 2}
        )
        for f in page["Functions"]
    ]
    assert sorted(everything) == sorted([(a, "$LATEST"), (a, "1"), (a, "2"), (b, "$LATEST")])
    versions = {(f["FunctionName"], f["Version"]): f for f in lam.list_functions(FunctionVersion="ALL")["Functions"]}
    assert versions[(a, "1")]["FunctionArn"] == function_arn(a, "1")
    assert versions[(a, "1")]["CodeSha256"] == code_sha256(handler_zip("a1"))
    assert versions[(a, "2")]["CodeSha256"] == code_sha256(handler_zip("a2"))


# -- UpdateFunctionCode -----------------------------------------------------------------------


def test_update_code_reports_in_progress_then_successful(lam: Any, fn_name: str) -> None:
    before = create_active(lam, fn_name, zip_bytes=handler_zip("old"))
    new_zip = handler_zip("new code")
    response = lam.update_function_code(FunctionName=fn_name, ZipFile=new_zip)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["CodeSha256"] == code_sha256(new_zip) != before["CodeSha256"]
    assert response["CodeSize"] == len(new_zip)
    assert response["State"] == "Active"
    assert response["LastUpdateStatus"] == "InProgress"
    assert response["RevisionId"] != before["RevisionId"]
    after = wait_active(lam, fn_name)
    assert after["LastUpdateStatus"] == "Successful"
    assert after["CodeSha256"] == code_sha256(new_zip)
    assert after["RevisionId"] not in (before["RevisionId"], response["RevisionId"])
    assert download(lam.get_function(FunctionName=fn_name)["Code"]["Location"]) == new_zip


def test_update_code_with_stale_revision_fails_and_changes_nothing(lam: Any, fn_name: str) -> None:
    created = create_function(lam, fn_name)
    current = strip_meta(wait_active(lam, fn_name))
    with raises_aws("PreconditionFailedException", 412, message=STALE_REVISION):
        lam.update_function_code(FunctionName=fn_name, ZipFile=handler_zip("x"), RevisionId=created["RevisionId"])
    assert strip_meta(lam.get_function_configuration(FunctionName=fn_name)) == current
    response = lam.update_function_code(FunctionName=fn_name, ZipFile=handler_zip("x"), RevisionId=current["RevisionId"])
    assert response["CodeSha256"] == code_sha256(handler_zip("x"))


def test_update_code_dry_run_changes_nothing(lam: Any, fn_name: str) -> None:
    before = strip_meta(create_active(lam, fn_name, zip_bytes=handler_zip("kept")))
    lam.update_function_code(FunctionName=fn_name, ZipFile=handler_zip("dry"), DryRun=True)
    assert strip_meta(lam.get_function_configuration(FunctionName=fn_name)) == before
    assert download(lam.get_function(FunctionName=fn_name)["Code"]["Location"]) == handler_zip("kept")
    assert [v["Version"] for v in lam.list_versions_by_function(FunctionName=fn_name)["Versions"]] == ["$LATEST"]


def test_update_code_with_publish_creates_a_version(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name, zip_bytes=handler_zip("p0"))
    response = lam.update_function_code(FunctionName=fn_name, ZipFile=handler_zip("p1"), Publish=True)
    assert response["Version"] == "1"
    assert response["FunctionArn"] == function_arn(fn_name, "1")
    assert response["CodeSha256"] == code_sha256(handler_zip("p1"))
    wait_active(lam, fn_name)
    version = lam.get_function_configuration(FunctionName=fn_name, Qualifier="1")
    assert version["CodeSha256"] == code_sha256(handler_zip("p1"))
    assert version["State"] == "Active"


def test_update_code_of_missing_function_is_not_found(lam: Any, fn_name: str) -> None:
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name)):
        lam.update_function_code(FunctionName=fn_name, ZipFile=handler_zip())


# -- UpdateFunctionConfiguration --------------------------------------------------------------


def test_update_configuration_changes_each_field(lam: Any, fn_name: str) -> None:
    previous = create_active(lam, fn_name, Environment={"Variables": {"AA": "1"}})
    steps: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"Timeout": 30}, {"Timeout": 30}),
        ({"MemorySize": 512}, {"MemorySize": 512}),
        ({"Environment": {"Variables": {"BB": "2"}}}, {"Environment": {"Variables": {"BB": "2"}}}),
        ({"Description": "described"}, {"Description": "described"}),
        ({"Handler": "other.main"}, {"Handler": "other.main"}),
        ({"Runtime": "nodejs20.x", "Handler": "index.handler"}, {"Runtime": "nodejs20.x", "Handler": "index.handler"}),
        ({"EphemeralStorage": {"Size": 1024}}, {"EphemeralStorage": {"Size": 1024}}),
        ({"Role": "arn:aws:iam::000000000000:role/other-role"}, {"Role": "arn:aws:iam::000000000000:role/other-role"}),
    ]
    for change, expected in steps:
        response = lam.update_function_configuration(FunctionName=fn_name, **change)
        assert response["LastUpdateStatus"] == "InProgress", change
        assert response["RevisionId"] != previous["RevisionId"]
        current = wait_active(lam, fn_name)
        assert current["LastUpdateStatus"] == "Successful"
        for key, value in expected.items():
            assert response[key] == value, change
            assert current[key] == value, change
        # Everything not named in the change is kept.
        untouched = {k: v for k, v in strip_meta(previous).items()
                     if k not in expected and k not in ("RevisionId", "LastModified", "LastUpdateStatus",
                                                        "LastUpdateStatusReason", "LastUpdateStatusReasonCode")}
        assert {k: current.get(k) for k in untouched} == untouched, change
        previous = current
    assert previous["CodeSha256"] == code_sha256(handler_zip())


def test_update_logging_config_partially_keeps_log_group(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name)
    lam.update_function_configuration(FunctionName=fn_name, LoggingConfig={"LogGroup": "/custom/group"})
    assert wait_active(lam, fn_name)["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": "/custom/group"}
    lam.update_function_configuration(FunctionName=fn_name, LoggingConfig={"LogFormat": "JSON"})
    config = wait_active(lam, fn_name)["LoggingConfig"]
    assert config["LogFormat"] == "JSON"
    assert config["LogGroup"] == "/custom/group"
    # JSON logs get AWS's default levels.
    assert config.get("ApplicationLogLevel") == "INFO"
    assert config.get("SystemLogLevel") == "INFO"


def test_update_configuration_with_stale_revision_fails_and_changes_nothing(lam: Any, fn_name: str) -> None:
    created = create_function(lam, fn_name)
    current = strip_meta(wait_active(lam, fn_name))
    with raises_aws("PreconditionFailedException", 412, message=STALE_REVISION):
        lam.update_function_configuration(FunctionName=fn_name, Timeout=60, RevisionId=created["RevisionId"])
    assert strip_meta(lam.get_function_configuration(FunctionName=fn_name)) == current
    response = lam.update_function_configuration(FunctionName=fn_name, Timeout=60, RevisionId=current["RevisionId"])
    assert response["Timeout"] == 60


# -- DeleteFunction ---------------------------------------------------------------------------


def test_delete_function_removes_it_and_everything_it_has(lam: Any, fn_name: str) -> None:
    create_active(lam, fn_name)
    lam.publish_version(FunctionName=fn_name)
    lam.create_alias(FunctionName=fn_name, Name="live", FunctionVersion="1")
    response = lam.delete_function(FunctionName=fn_name)
    assert_delete_status(response)
    for qualifier in (None, "1", "live"):
        kwargs = {"Qualifier": qualifier} if qualifier else {}
        with raises_aws("ResourceNotFoundException", 404):
            lam.get_function(FunctionName=fn_name, **kwargs)
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(fn_name)):
        lam.delete_function(FunctionName=fn_name)
    # The name is free again, and nothing of the old function comes back with it.
    recreated = create_active(lam, fn_name)
    assert [v["Version"] for v in lam.list_versions_by_function(FunctionName=fn_name)["Versions"]] == ["$LATEST"]
    assert lam.list_aliases(FunctionName=fn_name)["Aliases"] == []
    assert recreated["Version"] == "$LATEST"


# -- conflicts while a change is being applied --------------------------------------------------


def test_update_while_pending_is_a_conflict(server_factory: Any) -> None:
    """With FIREBOX_ACTIVATION_DELAY_S=30 a new function stays Pending for the whole test."""
    lam = server_factory(env={"FIREBOX_ACTIVATION_DELAY_S": "30"}).client()
    name = unique_name()
    created = create_function(lam, name)
    assert created["State"] == "Pending"
    pending = "The operation cannot be performed at this time. The function is currently in the following state: Pending"
    with raises_aws("ResourceConflictException", 409, contains=pending):
        lam.update_function_configuration(FunctionName=name, Description="too early")
    with raises_aws("ResourceConflictException", 409, contains="The function is currently in the following state: Pending"):
        lam.update_function_code(FunctionName=name, ZipFile=handler_zip("too early"))
    after = lam.get_function_configuration(FunctionName=name)
    assert after["State"] == "Pending"
    assert after["RevisionId"] == created["RevisionId"]
    assert after["Description"] == "" and after["CodeSha256"] == created["CodeSha256"]


def test_update_while_in_progress_is_a_conflict(server_factory: Any) -> None:
    """With a 3 s activation delay: wait for Active, start an update, and race it."""
    lam = server_factory(env={"FIREBOX_ACTIVATION_DELAY_S": "3"}).client()
    name = unique_name()
    create_function(lam, name)
    wait_active(lam, name, deadline_s=15)
    updating = lam.update_function_configuration(FunctionName=name, Description="first")
    assert updating["LastUpdateStatus"] == "InProgress"
    in_progress = f"An update is in progress for resource: {function_arn(name)}"
    with raises_aws("ResourceConflictException", 409, contains=in_progress):
        lam.update_function_configuration(FunctionName=name, Description="second")
    with raises_aws("ResourceConflictException", 409, contains=in_progress):
        lam.update_function_code(FunctionName=name, ZipFile=handler_zip("second"))
    with raises_aws("ResourceConflictException", 409, contains="An update is in progress"):
        lam.publish_version(FunctionName=name)
    after = lam.get_function_configuration(FunctionName=name)
    assert after["LastUpdateStatus"] == "InProgress", "the 3 s window closed before the test finished"
    assert after["Description"] == "first"
    assert after["RevisionId"] == updating["RevisionId"]
    assert lam.list_versions_by_function(FunctionName=name)["Versions"][-1]["Version"] == "$LATEST"


def test_waiters_work(lam: Any, fn_name: str) -> None:
    """boto3's own waiters (what deploy tools use) see Active and Successful."""
    create_function(lam, fn_name)
    lam.get_waiter("function_active_v2").wait(FunctionName=fn_name, WaiterConfig={"Delay": 0.05, "MaxAttempts": 200})
    lam.update_function_configuration(FunctionName=fn_name, Timeout=9)
    lam.get_waiter("function_updated_v2").wait(FunctionName=fn_name, WaiterConfig={"Delay": 0.05, "MaxAttempts": 200})
    config = lam.get_function_configuration(FunctionName=fn_name)
    assert (config["State"], config["LastUpdateStatus"], config["Timeout"]) == ("Active", "Successful", 9)
