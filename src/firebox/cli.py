"""The `firebox` command: start the server, and manage functions on a running one.

`firebox serve` builds `Settings` from flags and `FIREBOX_*` variables and runs the server.
The client commands (`deploy`, `ls`, `rm`) speak the public Lambda API through botocore's
Lambda client, exactly as boto3 and the AWS CLI do, so they hold no business logic: the
server validates, the CLI only packages a folder and prints answers. Server errors are
printed in one place (`_Group.invoke`), never per command.
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import botocore.session
import click
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from firebox import settings as fs

DEFAULT_ENDPOINT = f"http://{fs.DEFAULT_HOST}:{fs.DEFAULT_PORT}"
SKIPPED_DIRS = frozenset({"__pycache__", ".git"})
# Zip entries get this timestamp (the earliest a zip can hold) so that the same folder always
# gives the same bytes, hence the same CodeSha256, and redeploying unchanged code is a no-op.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Waiters poll every 0.2 s (botocore sleeps a float happily) for at most 60 s.
WAIT = {"Delay": 0.2, "MaxAttempts": 300}

out = Console()
err = Console(stderr=True)


class _Group(click.Group):
    """Turns the errors of a client call into one red line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "Unknown"), error.get("Message", str(exc))
            err.print(f"[red]error: {escape(code)}: {escape(message)}[/red]", highlight=False)
        except EndpointConnectionError as exc:
            url = escape(str(ctx.obj or exc.kwargs.get("endpoint_url")))
            err.print(f"[red]error: cannot reach Firebox at {url}[/red]", highlight=False)
            err.print("hint: start the server with [bold]./bin/up[/bold] (or `firebox serve`)")
        except BotoCoreError as exc:  # a waiter gave up, the connection broke, ...
            err.print(f"[red]error: {escape(str(exc))}[/red]", highlight=False)
        sys.exit(1)


def _env(*names: str, default: str) -> str:
    return next((os.environ[n] for n in names if os.environ.get(n)), default)


def _account_id() -> str:
    return _env("FIREBOX_ACCOUNT_ID", default=fs.Settings.account_id)


def _lambda_client(endpoint: str) -> Any:
    return _client("lambda", endpoint)


def _client(service: str, endpoint: str) -> Any:
    """The client every client command uses: dummy credentials unless AWS's are set."""
    aws_credentials = all(os.environ.get(v) for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    region = _env("FIREBOX_REGION", "AWS_REGION", "AWS_DEFAULT_REGION", default=fs.Settings.region)
    return botocore.session.get_session().create_client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=None if aws_credentials else "test",
        aws_secret_access_key=None if aws_credentials else "test",
        # A local server is up or it is not: fail fast instead of retrying for seconds.
        config=Config(retries={"mode": "standard", "total_max_attempts": 2}, connect_timeout=5, read_timeout=905),
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--endpoint",
    envvar="FIREBOX_ENDPOINT",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="URL of a running Firebox, for the client commands (env FIREBOX_ENDPOINT).",
)
@click.version_option(package_name="firebox")
@click.pass_context
def main(ctx: click.Context, endpoint: str) -> None:
    """Firebox: a self-hosted AWS Lambda."""
    ctx.obj = endpoint


@main.command()
# No click defaults: a flag's default would hide the FIREBOX_* variable that `from_env` reads.
@click.option("--host", help=f"Address to listen on [default: {fs.DEFAULT_HOST}; env FIREBOX_HOST]")
@click.option("--port", type=int, help=f"Port [default: {fs.DEFAULT_PORT}; env FIREBOX_PORT]")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Where state and code live [default: ./{fs.DEFAULT_DATA_DIR}; env FIREBOX_DATA_DIR]",
)
def serve(host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Run the Firebox server in the foreground."""
    try:
        settings = fs.Settings.from_env(host=host, port=port, data_dir=data_dir)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    from firebox import server  # late: the client commands must not load the whole platform

    sys.exit(server.serve(settings))


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--name", "-n", required=True, help="Function name.")
@click.option("--runtime", "-r", required=True, help="Runtime identifier, e.g. python3.12.")
@click.option("--handler", "-H", required=True, help="Handler, e.g. app.handler.")
@click.option("--memory", type=int, help="Memory size in MB.")
@click.option("--timeout", type=int, help="Timeout in seconds.")
@click.option("--env", "-e", multiple=True, metavar="KEY=VALUE", help="Environment variable.")
@click.option("--role", help="Role ARN [default: arn:aws:iam::<account>:role/firebox-default]")
@click.pass_obj
def deploy(
    endpoint: str,
    source: Path,
    name: str,
    runtime: str,
    handler: str,
    memory: int | None,
    timeout: int | None,
    env: tuple[str, ...],
    role: str | None,
) -> None:
    """Create function NAME from folder SOURCE (or a .zip), or update it if it exists."""
    code = _package(source)
    settings: dict[str, Any] = {"Runtime": runtime, "Handler": handler}
    if memory is not None:
        settings["MemorySize"] = memory
    if timeout is not None:
        settings["Timeout"] = timeout
    if env:
        settings["Environment"] = {"Variables": _parse_env(env)}
    client = _lambda_client(endpoint)
    try:
        default_role = f"arn:aws:iam::{_account_id()}:role/firebox-default"
        client.create_function(
            FunctionName=name, Code={"ZipFile": code}, Role=role or default_role, **settings
        )
        client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig=WAIT)
        action = "created"
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceConflictException":
            raise
        client.update_function_code(FunctionName=name, ZipFile=code)
        client.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig=WAIT)
        if role:
            settings["Role"] = role
        client.update_function_configuration(FunctionName=name, **settings)
        client.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig=WAIT)
        action = "updated"
    config = client.get_function_configuration(FunctionName=name)
    table = Table(title=f"{action} {name}", show_header=False, title_justify="left")
    for key in ("FunctionArn", "CodeSha256", "CodeSize", "State"):
        table.add_row(key, Text(str(config.get(key, "-"))))
    out.print(table)


@main.command(name="ls")
@click.pass_obj
def list_functions(endpoint: str) -> None:
    """List the functions ($LATEST of each)."""
    client = _lambda_client(endpoint)
    table = Table("name", "runtime", "memory", "timeout", "last modified", "state")
    for page in client.get_paginator("list_functions").paginate():
        for fn in page["Functions"]:
            # Like AWS, ListFunctions may leave State out; GetFunctionConfiguration has it.
            state = fn.get("State") or _state(client, fn["FunctionName"])
            cells = (
                fn["FunctionName"],
                fn.get("Runtime", "-"),
                f"{fn.get('MemorySize', '-')} MB",
                f"{fn.get('Timeout', '-')} s",
                fn.get("LastModified", "-"),
                state,
            )
            table.add_row(*map(Text, cells))  # Text: server data is never rich markup
    out.print(table if table.row_count else "no functions")


@main.command(name="rm")
@click.argument("name")
@click.option("--qualifier", "-q", help="Delete only this version (the function itself otherwise).")
@click.pass_obj
def remove(endpoint: str, name: str, qualifier: str | None) -> None:
    """Delete function NAME, or one of its versions."""
    kwargs = {"Qualifier": qualifier} if qualifier else {}
    _lambda_client(endpoint).delete_function(FunctionName=name, **kwargs)
    out.print(f"removed {name}:{qualifier}" if qualifier else f"removed function {name}")


@main.command()
@click.argument("name")
@click.option("--payload", "-p", default="{}", help="JSON event, or @FILE to read it from a file.")
@click.option("--qualifier", "-q", help="Version or alias to invoke.")
@click.option("--tail", is_flag=True, help="Print the invocation's log too.")
@click.pass_obj
def invoke(endpoint: str, name: str, payload: str, qualifier: str | None, tail: bool) -> None:
    """Invoke function NAME synchronously and print its result."""
    data = Path(payload[1:]).read_bytes() if payload.startswith("@") else payload.encode()
    kwargs = {"Qualifier": qualifier} if qualifier else {}
    answer = _lambda_client(endpoint).invoke(FunctionName=name, Payload=data, LogType="Tail", **kwargs)
    result = answer["Payload"].read().decode(errors="replace")
    log = base64.b64decode(answer.get("LogResult", "")).decode(errors="replace")
    if tail:
        for line in log.splitlines():
            _print_log_line(line)
    if answer.get("FunctionError"):
        err.print(Text(result, style="red"))
    else:
        out.print(Text(result))
    report = next((line for line in log.splitlines() if line.startswith("REPORT ")), None)
    if report:
        figures = [field for field in report.split("\t")[1:] if field.strip()]
        out.print(Text(f"version {answer.get('ExecutedVersion', '?')} | " + " | ".join(figures), style="dim"))
    if answer.get("FunctionError"):
        sys.exit(1)


@main.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they arrive (Ctrl-C stops).")
@click.option("--since", default="1h", show_default=True, help="How far back: 30s, 10m, 2h, 1d.")
@click.option("--filter", "pattern", metavar="PATTERN",
              help='CloudWatch filter pattern: terms, "a phrase", ?either ?or, -not, { $.level = "ERROR" }.')
@click.option("--request-id", metavar="ID", help="Only that invocation: START..REPORT and the lines carrying ID.")
@click.pass_obj
def logs(endpoint: str, name: str, follow: bool, since: str, pattern: str | None, request_id: str | None) -> None:
    """Print the log of function NAME (its LoggingConfig.LogGroup, else /aws/lambda/NAME), or of
    the log group NAME when it starts with '/'. REPORT lines are cyan, errors red."""
    client = _client("logs", endpoint)
    group = _log_group(endpoint, name)
    start_ms = int((time.time() - _duration_s(since)) * 1000)
    try:
        if request_id:
            _print_invocation(client, group, request_id.strip(), start_ms, follow)
        else:
            _tail(client, group, start_ms, pattern or "", follow)
    except KeyboardInterrupt:  # Ctrl-C ends --follow: not an error
        pass


FOLLOW_POLL_S = 0.5
FOLLOW_SLACK_MS = 1000


def _tail(client: Any, group: str, start_ms: int, pattern: str, follow: bool) -> None:
    """Poll FilterLogEvents from the newest timestamp seen (less a slack, for records committed
    a little after later ones) and skip the event ids already printed, as `aws logs tail
    --follow` does."""
    seen: dict[str, int] = {}
    cursor = start_ms
    while True:
        for event in _log_events(client, group, max(start_ms, cursor - FOLLOW_SLACK_MS), pattern, quiet=follow):
            if event["eventId"] not in seen:
                seen[event["eventId"]] = event["timestamp"]
                cursor = max(cursor, event["timestamp"])
                _print_event(event)
        if not follow:
            return
        seen = {k: ts for k, ts in seen.items() if ts >= cursor - FOLLOW_SLACK_MS}
        time.sleep(FOLLOW_POLL_S)


def _log_group(endpoint: str, name: str) -> str:
    if name.startswith("/"):
        return name
    try:
        config = _lambda_client(endpoint).get_function_configuration(FunctionName=name)
    except ClientError:  # deleted (its logs stay), or not a function name at all
        return f"/aws/lambda/{name}"
    return str(config.get("LoggingConfig", {}).get("LogGroup") or f"/aws/lambda/{name}")


def _log_events(client: Any, group: str, start_ms: int, pattern: str, *, quiet: bool = False,
                streams: list[str] | None = None, end_ms: int | None = None) -> list[dict[str, Any]]:
    """Every event of FilterLogEvents from `start_ms`, all pages; [] while the group does not
    exist (said once on stderr unless `quiet`)."""
    kwargs: dict[str, Any] = {"logGroupName": group, "startTime": start_ms, "filterPattern": pattern}
    if streams:
        kwargs["logStreamNames"] = streams
    if end_ms is not None:
        kwargs["endTime"] = end_ms
    events: list[dict[str, Any]] = []
    try:
        for page in client.get_paginator("filter_log_events").paginate(**kwargs):
            events += page["events"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
        if not quiet:
            err.print(Text(f"no log group {group} (nothing logged yet)", style="dim"))
    return events


def _print_invocation(client: Any, group: str, request_id: str, start_ms: int, follow: bool) -> None:
    """START..REPORT of `request_id` in its stream, plus every line carrying the id (found with
    the quoted filter pattern "<id>"); with --follow, until its REPORT line arrives."""
    shown: set[str] = set()
    while True:
        events = {e["eventId"]: e for e in _log_events(client, group, start_ms, f'"{request_id}"', quiet=follow)}
        start = next((e for e in events.values() if _platform_line(e["message"], "START", request_id)), None)
        report = next((e for e in events.values() if _platform_line(e["message"], "REPORT", request_id)), None)
        if start is not None:
            end_ms = report["timestamp"] if report is not None else None
            for e in _log_events(client, group, start["timestamp"], "", streams=[start["logStreamName"]], end_ms=end_ms):
                if _order(start) <= _order(e) and (report is None or _order(e) <= _order(report)):
                    events[e["eventId"]] = e
        for event in sorted(events.values(), key=_order):
            if event["eventId"] not in shown:
                shown.add(event["eventId"])
                _print_event(event)
        if report is not None or not follow:
            if not shown:
                err.print(Text(f"no log lines of request {request_id} in {group}", style="dim"))
            return
        time.sleep(FOLLOW_POLL_S)


def _order(event: dict[str, Any]) -> tuple[int, int, str]:
    event_id = event["eventId"]
    return event["timestamp"], int(event_id) if event_id.isdigit() else 0, event_id


def _platform_line(message: str, kind: str, request_id: str) -> bool:
    """START / REPORT of `request_id`, as text or as LogFormat=JSON's platform records."""
    if message.startswith(f"{kind} RequestId: {request_id}"):
        return True
    if not message.startswith('{"time"'):
        return False
    try:
        record = json.loads(message)
    except ValueError:
        return False
    kinds = {"START": "platform.start", "REPORT": "platform.report"}
    return (isinstance(record, dict) and record.get("type") == kinds[kind]
            and isinstance(record.get("record"), dict) and record["record"].get("requestId") == request_id)


def _print_event(event: dict[str, Any]) -> None:
    """One event: the sandbox's short id, then its lines (a traceback is one event, one style)."""
    stream = event["logStreamName"].rsplit("]", 1)[-1][:8]
    lines = event["message"].rstrip("\n").split("\n")
    style = _log_style(lines[0]) or _log_style(event["message"])
    for line in lines:
        _print_log_line(line, prefix=stream, style=style)


@main.command()
@click.pass_obj
def events(endpoint: str) -> None:
    """Asynchronous events per function: queued, in flight, retrying, failed, succeeded."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{endpoint.rstrip('/')}/_firebox/events", timeout=10) as answer:
            stats = json.loads(answer.read())
    except urllib.error.URLError as exc:
        err.print(f"[red]error: cannot reach Firebox at {escape(endpoint)}: {escape(str(exc.reason))}[/red]")
        sys.exit(1)
    table = Table("function", "queued", "in flight", "retrying", "failed", "succeeded")
    for name, counts in stats.items():
        table.add_row(Text(name), *(str(counts[k]) for k in ("queued", "in_flight", "retrying", "failed", "succeeded")))
    out.print(table if table.row_count else "no asynchronous events")


def _log_style(line: str) -> str | None:
    """cyan for REPORT (text or JSON), dim for START / END, red for errors, else None."""
    if line.startswith("REPORT ") or line.startswith('{"time"') and '"type":"platform.report"' in line:
        return "cyan"
    if line.startswith(("START ", "END ")) or line.startswith('{"time"') and '"type":"platform.' in line:
        return "dim"
    head = line.split("\t", 1)[0]
    if ("[ERROR]" in line or "[CRITICAL]" in line or "\tERROR\t" in line or "Error" in head
            or "Task timed out" in line or '"level":"ERROR"' in line or '"level": "ERROR"' in line):
        return "red"
    return None


def _print_log_line(line: str, prefix: str | None = None, style: str | None = None) -> None:
    text = Text(f"{prefix} " if prefix else "", style="dim")
    text.append(line, style=style or _log_style(line))
    out.print(text, highlight=False, soft_wrap=True)


def _duration_s(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise click.BadParameter(f"expected a number and a unit (s, m, h, d), got {text!r}", param_hint="--since")
    return int(text[:-1]) * units[text[-1]]


def _state(client: Any, name: str) -> str:
    try:
        return str(client.get_function_configuration(FunctionName=name).get("State", "-"))
    except ClientError:
        return "-"  # deleted between the two calls


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    variables = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--env")
        variables[key] = value
    return variables


def _package(source: Path) -> bytes:
    """The code zip: SOURCE itself if it is a zip file, else SOURCE's folder, deterministically."""
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise click.BadParameter(f"{source} is neither a folder nor a zip", param_hint="SOURCE")
        return source.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in _files(source):
            entry = zipfile.ZipInfo(str(PurePosixPath(*path.relative_to(source).parts)), ZIP_EPOCH)
            executable = path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            entry.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes())
    return buffer.getvalue()


def _files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        files.extend(Path(dirpath, f) for f in filenames if f not in SKIPPED_DIRS)
    return sorted(files, key=lambda p: p.relative_to(folder).parts)


if __name__ == "__main__":
    main()
