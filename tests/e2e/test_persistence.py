"""Durability: what a server stores survives a clean stop (SIGTERM) and a crash (SIGKILL), and a
restarted server resumes the work a stopped one left unfinished."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from typing import Any

from .helpers import (
    clean_env,
    code_sha256,
    create_active,
    create_function,
    function_arn,
    handler_zip,
    make_zip,
    strip_meta,
    unique_name,
    wait_active,
)


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def snapshot(lam: Any, name: str) -> dict[str, Any]:
    """Everything the control plane tells about one function (minus per-request metadata)."""
    latest = lam.get_function(FunctionName=name)
    return {
        "latest": strip_meta(latest["Configuration"]),
        "concurrency": latest.get("Concurrency"),
        "v1": strip_meta(lam.get_function_configuration(FunctionName=name, Qualifier="1")),
        "versions": [strip_meta(v) for v in lam.list_versions_by_function(FunctionName=name)["Versions"]],
        "aliases": [strip_meta(a) for a in lam.list_aliases(FunctionName=name)["Aliases"]],
        "alias": strip_meta(lam.get_alias(FunctionName=name, Name="live")),
        "reserved": lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions"),
        "code": download(latest["Code"]["Location"]),
        "code_v1": download(lam.get_function(FunctionName=name, Qualifier="1")["Code"]["Location"]),
    }


def test_sigterm_stops_cleanly(server_factory: Any) -> None:
    """SIGTERM is the way to stop a server: it finishes its shutdown (platform stopped, store
    closed) and exits with status 0 well within 15 s, even with work in flight."""
    srv = server_factory(env={"FIREBOX_ACTIVATION_DELAY_S": "30"})
    lam = srv.client()
    create_function(lam, unique_name())  # a preparation is pending when the signal comes
    code = srv.stop()
    assert code == 0, (
        f"exit status {code}" + (" (killed by SIGTERM: the shutdown did not finish)" if code == -signal.SIGTERM else "")
        + f"\n{srv.stderr(30)}"
    )


def test_everything_survives_a_restart(server_factory: Any, tmp_path: Any) -> None:
    data_dir = tmp_path / "persistent"
    first = server_factory(data_dir=data_dir)
    lam = first.client()
    name = unique_name()
    zip_v1 = make_zip({"app.py": "def handler(e, c):\n    return 1\n", "data/blob.bin": bytes(range(256)) * 64})
    create_active(lam, name, zip_bytes=zip_v1, Environment={"Variables": {"STAGE": "one"}})
    lam.publish_version(FunctionName=name)
    lam.update_function_code(FunctionName=name, ZipFile=handler_zip("v2"))
    wait_active(lam, name)
    lam.update_function_configuration(FunctionName=name, Description="second", MemorySize=256)
    wait_active(lam, name)
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1", Description="prod")
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=7)
    other = unique_name()
    create_active(lam, other)
    before = snapshot(lam, name)
    names_before = sorted(f["FunctionName"] for f in lam.list_functions()["Functions"])
    assert before["code_v1"] == zip_v1 and before["code"] == handler_zip("v2")

    first.stop()
    second = server_factory(data_dir=data_dir)
    lam2 = second.client()
    after = snapshot(lam2, name)
    assert after == before
    assert sorted(f["FunctionName"] for f in lam2.list_functions()["Functions"]) == names_before
    assert lam2.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"] == 1000 - 7

    # The version counter and the "nothing changed since version 1" memory survive too.
    assert lam2.publish_version(FunctionName=name)["Version"] == "2"
    assert lam2.publish_version(FunctionName=name)["Version"] == "2"
    lam2.delete_function(FunctionName=name, Qualifier="2")
    lam2.update_function_configuration(FunctionName=name, Description="third")
    wait_active(lam2, name)
    second.stop()
    third = server_factory(data_dir=data_dir).client()
    assert third.publish_version(FunctionName=name)["Version"] == "3"
    assert [v["Version"] for v in third.list_versions_by_function(FunctionName=name)["Versions"]] == ["$LATEST", "1", "3"]


def test_a_crash_loses_nothing_acknowledged(server_factory: Any, tmp_path: Any) -> None:
    """SIGKILL right after the answers: what the server acknowledged is there after a restart."""
    data_dir = tmp_path / "crash"
    first = server_factory(data_dir=data_dir)
    lam = first.client()
    names = [unique_name() for _ in range(3)]
    for name in names:
        create_active(lam, name)
    lam.publish_version(FunctionName=names[0])
    changed = lam.update_function_configuration(FunctionName=names[1], Timeout=42)
    wait_active(lam, names[1])
    lam.delete_function(FunctionName=names[2])
    first.kill()

    lam2 = server_factory(data_dir=data_dir).client()
    assert sorted(f["FunctionName"] for f in lam2.list_functions()["Functions"]) == sorted(names[:2])
    assert lam2.get_function_configuration(FunctionName=names[0], Qualifier="1")["Version"] == "1"
    config = wait_active(lam2, names[1])
    assert config["Timeout"] == 42 and config["CodeSha256"] == changed["CodeSha256"]


def test_pending_function_becomes_active_after_a_crash_and_restart(server_factory: Any, tmp_path: Any) -> None:
    data_dir = tmp_path / "pending"
    slow = server_factory(data_dir=data_dir, env={"FIREBOX_ACTIVATION_DELAY_S": "30"})
    lam = slow.client()
    name = unique_name()
    zip_bytes = handler_zip("resumed")
    created = create_function(lam, name, zip_bytes=zip_bytes)
    assert created["State"] == "Pending"
    assert lam.get_function_configuration(FunctionName=name)["State"] == "Pending"
    slow.kill()

    fast = server_factory(data_dir=data_dir, env={"FIREBOX_ACTIVATION_DELAY_S": "0"})
    lam2 = fast.client()
    config = wait_active(lam2, name)
    assert config["LastUpdateStatus"] == "Successful"
    assert config["CodeSha256"] == code_sha256(zip_bytes)
    assert config["FunctionArn"] == function_arn(name)
    assert download(lam2.get_function(FunctionName=name)["Code"]["Location"]) == zip_bytes


def test_update_in_progress_completes_after_a_crash_and_restart(server_factory: Any, tmp_path: Any) -> None:
    data_dir = tmp_path / "updating"
    name = unique_name()
    first = server_factory(data_dir=data_dir)
    create_active(first.client(), name)
    first.stop()
    slow = server_factory(data_dir=data_dir, env={"FIREBOX_ACTIVATION_DELAY_S": "30"})
    updating = slow.client().update_function_code(FunctionName=name, ZipFile=handler_zip("mid-update"))
    assert updating["LastUpdateStatus"] == "InProgress"
    slow.kill()

    lam = server_factory(data_dir=data_dir).client()
    config = wait_active(lam, name)
    assert config["LastUpdateStatus"] == "Successful"
    assert config["CodeSha256"] == code_sha256(handler_zip("mid-update"))


def test_tags_survive_a_restart(server_factory: Any, tmp_path: Any) -> None:
    data_dir = tmp_path / "tags"
    first = server_factory(data_dir=data_dir)
    name = unique_name()
    arn = create_active(first.client(), name, Tags={"team": "core"})["FunctionArn"]
    first.client().tag_resource(Resource=arn, Tags={"env": "prod"})
    first.stop()
    lam = server_factory(data_dir=data_dir).client()
    assert lam.list_tags(Resource=arn)["Tags"] == {"team": "core", "env": "prod"}
    assert lam.get_function(FunctionName=name)["Tags"] == {"team": "core", "env": "prod"}


def test_two_servers_cannot_share_a_data_dir(server_factory: Any, tmp_path: Any) -> None:
    data_dir = tmp_path / "shared"
    server_factory(data_dir=data_dir)
    result = subprocess.run(
        [sys.executable, "-m", "firebox", "serve", "--port", "0", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=clean_env(),
    )
    assert result.returncode != 0
    assert "another Firebox server" in result.stderr, result.stderr
