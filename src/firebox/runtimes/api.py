"""The `runtimes` contract: what runs INSIDE a sandbox, and how the platform starts it.

This module is the platform's only door into the component (`firebox.worker` imports
`RUNTIME_DIR` and `bootstrap_command` from here). Like everything under `firebox/runtimes/` it
imports only the standard library: the bootstraps beside it run in the function's own
interpreter, where nothing of the platform is installed, and are executed as scripts, never
imported as part of the `firebox` package.

Layout (the folder is bound read-only at `/var/runtime` in every sandbox)::

    RUNTIME_DIR/python/bootstrap.py    the Python runtime  (python3.x; needs Python >= 3.8)
    RUNTIME_DIR/python/stem.py         a Python stem cell: loads the runtime, waits for its function
    RUNTIME_DIR/nodejs/bootstrap.mjs   the Node.js runtime (nodejs18.x and later; ES module)
    RUNTIME_DIR/nodejs/stem.mjs        a Node.js stem cell
    /var/task/bootstrap                a `provided.*` function's own executable

What a runtime does (exactly what AWS's runtime interface clients do):

1. Read the Lambda variables: `AWS_LAMBDA_RUNTIME_API` (`host:port`), `_HANDLER`,
   `LAMBDA_TASK_ROOT` (default `/var/task`), `AWS_LAMBDA_FUNCTION_NAME`,
   `AWS_LAMBDA_FUNCTION_VERSION`, `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`,
   `AWS_LAMBDA_LOG_GROUP_NAME`, `AWS_LAMBDA_LOG_STREAM_NAME`, `AWS_LAMBDA_LOG_FORMAT`
   (`Text` | `JSON`), `AWS_LAMBDA_LOG_LEVEL` (application log level; unset = the language
   default) and, Firebox only, `FIREBOX_RUNTIME_LIBS` (colon-separated folders the platform
   provides, e.g. its boto3; appended to the END of `sys.path` / `NODE_PATH`, so a function's
   own copy always wins).
2. Init, once per sandbox: load the handler's module (its top-level code runs here, once). On
   failure: log the error, `POST /2018-06-01/runtime/init/error` with header
   `Lambda-Runtime-Function-Error-Type: <errorType>` and body
   `{"errorMessage", "errorType", "requestId": "", "stackTrace": [...]}` (Node:
   `{"errorType", "errorMessage", "trace"}`), then exit non-zero (Python 1, Node 129).
   errorTypes: `Runtime.ImportModuleError`, `Runtime.HandlerNotFound`,
   `Runtime.MalformedHandlerName`, `Runtime.UserCodeSyntaxError`,
   `Runtime.BuiltInModuleConflict` (Python), or the type of whatever the module raised.
3. Loop forever: `GET /2018-06-01/runtime/invocation/next` (a long poll with no timeout, on one
   keep-alive connection; the first `/next` is the platform's signal that init is done), call
   the handler with the JSON-decoded event and a context object built from the `/next`
   headers (`Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`, `-Invoked-Function-Arn`,
   `-Trace-Id` -> env `_X_AMZN_TRACE_ID`, `-Client-Context`, `-Cognito-Identity`), then
   `POST .../invocation/{id}/response` with the JSON result (`null` for none) or
   `POST .../invocation/{id}/error` with header `Lambda-Runtime-Function-Error-Type: Unhandled`
   and the error body (Python `{"errorMessage", "errorType", "requestId", "stackTrace"}`, Node
   `{"errorType", "errorMessage", "trace"}`). A non-2xx answer to a POST (e.g. 413 for a
   response over 6 MB) is the platform's business; the runtime goes on to the next `/next`.

Output: stdout and stderr are the function's log. `print` / `process.stdout.write` output is
passed through raw; the runtimes' own records (Python `logging`, Node `console.*`, error
reports) are ONE line each: inner newlines are written as `\\r` so that a line-based capture
keeps a record whole (the platform turns them back into newlines). Python: `logging` records
are `[LEVEL]\\t<UTC ISO time>.mmmZ\\t<request id>\\t<message>`, invocation errors
`[ERROR] <type>: <message>\\rTraceback (most recent call last):\\r...`, on stdout. Node:
`<ISO time>\\t<request id>\\t<LEVEL>\\t<util.format(...)>` on stdout. With
`AWS_LAMBDA_LOG_FORMAT=JSON` both emit one JSON object per record instead. The Python
runtime's stdout/stderr are unbuffered (`-u`) so a record is out before a timeout kill.

Exit statuses: 0 never (a runtime serves until killed); 1 when the Runtime API goes away or
answers `/next` with an error, or after a Python init error; Node: 129 after an init error or an
uncaught exception, 128 after an unhandled promise rejection (the error is posted first).
A function's own `sys.exit()` / `process.exit()` ends the runtime as it does on AWS.

Starting a runtime: `bootstrap_command(runtime, interpreter)` is the argv (Python:
`python3.x -u -S -B -c <loader> /var/runtime/python/bootstrap.py`, see `PYTHON_FLAGS` and
`PYTHON_LOADER`; Node: `node /var/runtime/nodejs/bootstrap.mjs`); `precompile(interpreter)`,
once per Python interpreter on the host, saves every Python sandbox compiling the bootstrap.

Stem cells: `stem_command(runtime, interpreter, flavour=...)` starts a runtime that loads itself
(and, for the `boto3` flavour, the platform's boto3) in a sandbox with an empty task root and a
neutral environment, then long-polls the private `GET /2018-06-01/runtime/firebox/specialize`;
the answer (the function's complete environment, a JSON object) replaces its environment and
it continues exactly as the bootstrap does from init on. `probe_stem(interpreter, flavour,
libs)` reports what a flavour's preload touched (module names, environment variables), so the
worker can keep a function whose package or variables would change that preload away from it.

Custom runtimes (`provided.al2`, `provided.al2023`): `/var/task/bootstrap` is started with the
same variables and speaks the same API itself (AWS falls back to `/opt/bootstrap`, a layer's,
when the package has none: `bootstrap_command(..., task_root="/opt")` builds that one).
"""

from __future__ import annotations

import os
import pathlib

RUNTIME_DIR = pathlib.Path(__file__).resolve().parent
"""This folder on the host: bind it read-only at `MOUNT_POINT` inside sandboxes."""

MOUNT_POINT = "/var/runtime"
"""Where sandboxes see `RUNTIME_DIR` (AWS's `LAMBDA_RUNTIME_DIR`)."""

PYTHON_BOOTSTRAP = "python/bootstrap.py"
PYTHON_STEM = "python/stem.py"  # a pre-started Python sandbox waiting for its function (stem.py)
NODEJS_BOOTSTRAP = "nodejs/bootstrap.mjs"
NODEJS_STEM = "nodejs/stem.mjs"

# Stem cell flavours per runtime family: what a cell has loaded before it knows its function.
STEM_FLAVOURS = {"python": ("plain", "boto3"), "nodejs": ("plain",)}

# -u  unbuffered stdout/stderr: every write reaches the pipe at once, so a record written just
#     before a timeout kill is not lost in a buffer (AWS's runtime wraps both streams in an
#     `Unbuffered` writer that flushes after every write: the same observable behaviour).
# -S  no `site`: the function sees the standard library, its own code, its layers and
#     FIREBOX_RUNTIME_LIBS, never the host interpreter's (or a virtualenv's) site-packages nor
#     their .pth hooks; it also keeps a cold start independent of what the host installed.
#     The bootstrap restores the `exit`/`quit` builtins that `site` would have added.
# -B  no __pycache__ writes: /var/task is read-only in a sandbox and, with the plain-process
#     backend, is the shared content-addressed code cache, which must stay byte-for-byte what
#     was unpacked (the worker precompiles .pyc files there; -B still reads them).
# PYTHON* variables stay honoured (no -E / -I): AWS lets a function set PYTHONPATH.
PYTHON_FLAGS = ("-u", "-S", "-B")

# The bootstrap is loaded through this one-liner rather than run as a script: a script's code is
# compiled on every start (about 10 ms of a ~50 ms cold start on a small host), a module's is read
# from `__pycache__` when `precompile()` wrote it (the loader checks the cached bytecode against
# the source's mtime and size, so a stale cache is never used; without one it compiles, as a
# script would). `python3 /var/runtime/python/bootstrap.py` remains a valid way to start it.
PYTHON_LOADER = (
    "import importlib.util as u,sys;s=u.spec_from_file_location('_firebox_bootstrap',sys.argv[1]);"
    "m=u.module_from_spec(s);s.loader.exec_module(m);sys.exit(m.main())"
)


def runtime_family(runtime: str) -> str:
    """`python`, `nodejs` or `provided` for a Lambda runtime id (`python3.11`, `nodejs20.x`...)."""
    for family in ("python", "nodejs", "provided"):
        if runtime.startswith(family):
            return family
    raise ValueError(f"unknown runtime {runtime!r}")


def bootstrap_command(
    runtime: str,
    interpreter: str,
    *,
    runtime_dir: str | os.PathLike[str] = MOUNT_POINT,
    task_root: str | os.PathLike[str] = "/var/task",
) -> list[str]:
    """The argv that starts `runtime` in a sandbox: the process then serves invocations forever.

    `interpreter` is the path of `python3.x` / `node` as the sandbox sees it (ignored for
    `provided.*`). `runtime_dir` is where this folder is visible (`/var/runtime` in a sandbox;
    pass `RUNTIME_DIR` to run a bootstrap straight from the host, as the plain-process backend
    and the tests do). `task_root` is where the function's code is (`LAMBDA_TASK_ROOT`).
    """
    family = runtime_family(runtime)
    if family == "python":
        bootstrap = os.path.join(os.fspath(runtime_dir), PYTHON_BOOTSTRAP)
        return [interpreter, *PYTHON_FLAGS, "-c", PYTHON_LOADER, bootstrap]
    if family == "nodejs":
        return [interpreter, os.path.join(os.fspath(runtime_dir), NODEJS_BOOTSTRAP)]
    return [os.path.join(os.fspath(task_root), "bootstrap")]


def stem_command(runtime: str, interpreter: str, *, flavour: str = "plain",
                 runtime_dir: str | os.PathLike[str] = MOUNT_POINT) -> list[str]:
    """The argv of a stem cell (`python/stem.py`, `nodejs/stem.mjs`): the same interpreter and
    flags as `bootstrap_command`, but the process waits for the platform to name its function.
    `flavour` is one of `STEM_FLAVOURS[family]`."""
    family = runtime_family(runtime)
    if flavour not in STEM_FLAVOURS.get(family, ()):
        raise ValueError(f"no {flavour!r} stem cells for {runtime!r}")
    if family == "nodejs":
        return [interpreter, os.path.join(os.fspath(runtime_dir), NODEJS_STEM)]
    argv = [interpreter, *PYTHON_FLAGS, "-c", PYTHON_LOADER, os.path.join(os.fspath(runtime_dir), PYTHON_STEM)]
    return argv if flavour == "plain" else [*argv, flavour]


def probe_stem(interpreter: str, flavour: str, libs: str | os.PathLike[str] | None) -> dict[str, list[str]] | None:
    """What a Python stem cell's `flavour` preload touches, run once on the host with the
    sandbox's interpreter and the platform's libraries (`libs`, bound at FIREBOX_RUNTIME_LIBS in
    sandboxes): `{"modules": [...], "third_party": [...], "environ": [...]}`, the top-level
    module names it imported or looked for, those of them outside the standard library, and the
    environment variables it read. None when the probe could not run (then no such cells)."""
    import json
    import subprocess

    environment = {"PATH": "/usr/bin:/bin", "LANG": "en_US.UTF-8", "TZ": ":UTC", "LAMBDA_TASK_ROOT": "/var/task"}
    if libs is not None:
        environment["FIREBOX_RUNTIME_LIBS"] = os.fspath(libs)
    argv = [interpreter, *PYTHON_FLAGS, "-c", PYTHON_LOADER, str(RUNTIME_DIR / PYTHON_STEM), "--probe", flavour]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=120, check=False, env=environment,
                              stdin=subprocess.DEVNULL, cwd="/")
        report = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if not isinstance(report, dict) or not all(isinstance(report.get(k), list) for k in ("modules", "third_party", "environ")):
        return None
    return {k: [str(v) for v in report[k]] for k in ("modules", "third_party", "environ")}


def precompile(interpreter: str) -> bool:
    """Write the Python bootstrap's bytecode cache for `interpreter` (on the host, where
    `RUNTIME_DIR` is writable); every sandbox started with that interpreter then skips compiling
    it. Call once per interpreter at worker start; False when it could not (nothing breaks)."""
    import subprocess

    sources = [str(RUNTIME_DIR / PYTHON_BOOTSTRAP), str(RUNTIME_DIR / PYTHON_STEM)]
    try:
        done = subprocess.run([interpreter, "-m", "py_compile", *sources], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
