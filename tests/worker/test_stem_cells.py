"""Stem cells (worker/stemcells.py) with real isolated sandboxes: a LocalWorker specialises a
pre-started Python sandbox for one function, refills its pool in the background, drops cells
that die, never hands a cell to two functions, and leaves nothing behind when stopped."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import PYTHON, run

from firebox.runtimes.api import RUNTIME_DIR
from firebox.worker.api import FunctionSpec, HostRuntimes
from firebox.worker.backends import IsolatedBackend
from firebox.worker.codecache import PackageTraits, describe_package
from firebox.worker.local import LocalWorker, boto3_compatible, stem_eligible
from firebox.worker.runtimeapi import Invocation, RuntimeChannel
from firebox.worker.sandbox import Sandbox
from firebox.worker.stemcells import (
    CellKey,
    StemCellPool,
    plan_population,
    populate,
    premade_dirs,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated backend needs root (netns, uid drop, cgroups)"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

UIDS = range(63300, 63400)
SOURCE = "import os\nLOADS = [1]\n\ndef handler(event, context):\n    return {'marker': MARKER, 'env': os.environ.get('OWN'), 'loads': len(LOADS)}\n"


class Logs:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def append_lines(self, group: str, stream: str, timestamp_ms: int, messages: Any, *, platform: bool = False) -> None:
        self.lines.extend(messages)


class Codes:
    """A code cache stand-in: one world-readable directory per 'hash'."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.trees: dict[str, Path] = {}

    def add(self, sha: str, marker: str) -> None:
        tree = self.root / sha
        tree.mkdir(mode=0o755)
        (tree / "app.py").write_text(f"MARKER = {marker!r}\n" + SOURCE)
        (tree / "app.py").chmod(0o644)
        self.trees[sha] = tree

    def add_files(self, sha: str, files: dict[str, str]) -> None:
        tree = self.root / sha
        for name, text in files.items():
            path = tree / name
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o644)
        for directory in [tree, *[p for p in tree.rglob("*") if p.is_dir()]]:
            directory.chmod(0o755)
        self.trees[sha] = tree

    async def ensure(self, sha: str, python: object = None) -> Path:
        return self.trees[sha]

    async def traits(self, sha: str) -> PackageTraits:
        return describe_package(self.trees[sha])


def spec(name: str, sha: str, **overrides: Any) -> FunctionSpec:
    values: dict[str, Any] = dict(
        name=name, version="$LATEST", runtime="python3.11", handler="app.handler", code_sha256_hex=sha,
        memory_mb=192, timeout_s=10, ephemeral_storage_mb=512, environment={"OWN": name},
        log_group=f"/aws/lambda/{name}", log_format="Text", application_log_level=None, region="us-east-1",
        account_id="000000000000", key=f"{name}-{sha}",
    )
    values.update(overrides)
    return FunctionSpec(**values)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def world(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[LocalWorker, IsolatedBackend, Codes]]:
    base = Path(tempfile.mkdtemp(prefix="firebox-test-stem-", dir="/tmp"))
    os.chmod(base, 0o755)
    backend = IsolatedBackend(uid_range=UIDS)
    codes = Codes(base)
    for index in range(3):
        codes.add(f"{index:064x}", f"code{index}")
    worker = LocalWorker(backend, codes, Logs(), HostRuntimes({"python3.11": Path(PYTHON)}, "x86_64"),  # type: ignore[arg-type]
                         stem_cells=2)
    run(loop, worker.start())
    try:
        yield worker, backend, codes
    finally:
        run(loop, worker.stop())
        run(loop, backend.close())
        shutil.rmtree(base, ignore_errors=True)


async def _until(check: Any, what: str, deadline_s: float = 15.0) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _full(worker: LocalWorker) -> None:
    await _until(lambda: worker.stem_statistics()["ready"] == 2, "a full pool")


async def _invoke(sandbox: Sandbox, request_id: str = "r1") -> bytes:
    invocation = Invocation(request_id=request_id, payload=b"{}", deadline_ms=int(time.time() * 1000) + 10_000,
                            invoked_function_arn="arn", trace_id="Root=1")
    outcome = await sandbox.invoke(invocation)
    assert outcome.function_error is None, outcome
    return outcome.payload


def test_cold_start_specialises_a_cell_for_one_function(loop, world) -> None:
    worker, backend, codes = world

    async def scenario() -> None:
        await _full(worker)
        sandbox = await worker.create_sandbox(spec("alpha", f"{0:064x}"))
        assert isinstance(sandbox, Sandbox) and sandbox.ready
        assert worker.stem_statistics()["specialised"] == 1
        assert sandbox.spec.function_name == "alpha" and sandbox.spec.memory_mb == 192
        assert sandbox.spec.code_dir.parent == codes.root / ".cells"
        assert (sandbox.spec.code_dir / "app.py").stat().st_ino == (codes.trees[f"{0:064x}"] / "app.py").stat().st_ino
        cgroup = sandbox.process.cgroup  # type: ignore[attr-defined]
        if cgroup is not None:
            limit_file = "memory.limit_in_bytes" if cgroup.version == 1 else "memory.max"
            assert int((cgroup.dirs[0] / limit_file).read_text()) == 192 * 1024 * 1024
        assert b'"marker": "code0"' in await _invoke(sandbox)
        assert b'"env": "alpha"' in await _invoke(sandbox, "r2")
        assert sandbox.init_duration_ms is not None
        task_dir = sandbox.spec.code_dir
        await sandbox.destroy()
        assert not task_dir.exists(), "a dead cell's copy of the code stays behind"
        await _full(worker)  # refilled in the background

    run(loop, scenario())


def test_functions_never_share_a_cell(loop, world) -> None:
    worker, _, _ = world

    async def scenario() -> None:
        await _full(worker)
        sandboxes = [await worker.create_sandbox(spec(f"fn{i}", f"{i:064x}")) for i in range(3)]
        assert len({s.id for s in sandboxes}) == 3
        for i, sandbox in enumerate(sandboxes):
            assert isinstance(sandbox, Sandbox)
            assert f'"marker": "code{i}"'.encode() in await _invoke(sandbox)
            assert sorted(p.name for p in sandbox.spec.code_dir.iterdir()) == ["app.py"]
            await sandbox.destroy()

    run(loop, scenario())


def test_a_dead_cell_is_dropped_and_replaced(loop, world) -> None:
    worker, _, _ = world

    async def scenario() -> None:
        await _full(worker)
        pool = worker._stems._pools[CellKey("python3.11", 512)]  # type: ignore[union-attr]
        victim = pool.ready[0]
        victim.process.kill()
        await _until(lambda: victim not in pool.ready, "the dead cell to be dropped")
        await _full(worker)
        sandbox = await worker.create_sandbox(spec("after", f"{1:064x}"))
        assert isinstance(sandbox, Sandbox) and sandbox.id != victim.id
        assert b"code1" in await _invoke(sandbox)
        await sandbox.destroy()

    run(loop, scenario())


def test_startup_sensitive_variables_take_the_usual_path(loop, world) -> None:
    worker, _, _ = world
    assert not stem_eligible(spec("p", "0", environment={"PYTHONPATH": "/x"}))
    assert not stem_eligible(spec("p", "0", environment={"LD_PRELOAD": "/x.so"}))
    assert stem_eligible(spec("p", "0", environment={"MY_PYTHON": "x"}))

    async def scenario() -> None:
        await _full(worker)
        sandbox = await worker.create_sandbox(spec("hs", f"{2:064x}", environment={"PYTHONHASHSEED": "0"}))
        assert isinstance(sandbox, Sandbox)
        assert worker.stem_statistics()["specialised"] == 0
        assert sandbox.spec.code_dir == Path(f"{worker._code_cache.root}/{2:064x}")
        await sandbox.destroy()

    run(loop, scenario())


def test_stop_leaves_nothing_behind(loop) -> None:
    base = Path(tempfile.mkdtemp(prefix="firebox-test-stem-", dir="/tmp"))
    os.chmod(base, 0o755)
    backend = IsolatedBackend(uid_range=UIDS)
    worker = LocalWorker(backend, Codes(base), Logs(), HostRuntimes({"python3.11": Path(PYTHON)}, "x86_64"),  # type: ignore[arg-type]
                         stem_cells=2)

    async def scenario() -> None:
        await worker.start()
        await _full(worker)
        await worker.stop()
        assert backend.statistics()["live"] == 0
        assert not (base / ".cells").exists()
        await backend.close()

    try:
        run(loop, scenario())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_cell_starts_with_the_likely_variables_and_its_function_sees_its_own(loop) -> None:
    """Cells start with the variables most functions have (`likely_environment`); a function
    whose values differ (another region, 192 MB, version 3, JSON logs) sees exactly its own."""
    base = Path(tempfile.mkdtemp(prefix="firebox-test-stem-", dir="/tmp"))
    os.chmod(base, 0o755)
    backend = IsolatedBackend(uid_range=UIDS)
    codes = Codes(base)
    codes.add_files(f"{7:064x}", {"app.py": "import os\n\ndef handler(event, context):\n    return dict(os.environ)\n"})
    worker = LocalWorker(backend, codes, Logs(), HostRuntimes({"python3.11": Path(PYTHON)}, "x86_64"),  # type: ignore[arg-type]
                         stem_cells=1, region="eu-west-1")
    function = spec("envs", f"{7:064x}", version="3", log_format="JSON")

    async def scenario() -> None:
        await worker.start()
        try:
            await _until(lambda: worker.stem_statistics()["ready"] == 1, "a ready cell")
            cell = worker._cell_spec("a" * 32, CellKey("python3.11", 512), base)
            assert {k: v for k, v in cell.environment.items() if k.startswith("AWS_")} == {
                "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11", "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1", "AWS_LAMBDA_LOG_FORMAT": "Text",
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"}
            boto3_cell = worker._cell_spec("b" * 32, CellKey("python3.11", 512, "boto3"), base)
            assert "AWS_LAMBDA_FUNCTION_MEMORY_SIZE" not in boto3_cell.environment
            sandbox = await worker.create_sandbox(function)
            assert isinstance(sandbox, Sandbox) and worker.stem_statistics()["specialised"] == 1
            seen = json.loads(await _invoke(sandbox))
            expected = dict(sandbox.spec.environment, AWS_LAMBDA_RUNTIME_API=seen["AWS_LAMBDA_RUNTIME_API"],
                            _X_AMZN_TRACE_ID="Root=1")
            assert seen == expected
            assert (seen["AWS_REGION"], seen["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]) == ("us-east-1", "192")
            assert (seen["AWS_LAMBDA_FUNCTION_VERSION"], seen["AWS_LAMBDA_LOG_FORMAT"]) == ("3", "JSON")
            await sandbox.destroy()
        finally:
            await worker.stop()
            await backend.close()

    try:
        run(loop, scenario())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_specialize_route_is_one_shot_and_stem_only(loop) -> None:
    async def scenario() -> None:
        plain = RuntimeChannel()
        assert plain.ask_specialization() is None
        stem = RuntimeChannel(stem=True)
        stem.specialize(b'{"A": "1"}')
        body = stem.ask_specialization()
        assert body is not None and await body == b'{"A": "1"}'
        assert stem.stem_waiting is not None and stem.stem_waiting.done()
        assert stem.ask_specialization() is None
        with pytest.raises(RuntimeError):
            stem.specialize(b"{}")

    run(loop, scenario())


# -- boto3 cells ---------------------------------------------------------------------------------

LIBS = Path(sys.prefix) / "firebox-lambda-python"
BOTO3_SOURCE = (
    "import sys\nimport boto3\n\n"
    "def handler(event, context):\n"
    "    return {'version': boto3.__version__, 'file': boto3.__file__, 'first': sys.path[0]}\n"
)
BOTO3 = f"{10:064x}"
OWN_BOTO3 = f"{11:064x}"
NO_BOTO3 = f"{12:064x}"


@pytest.fixture
def boto3_world(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[LocalWorker, Codes]]:
    if not (LIBS / "boto3").is_dir():
        pytest.skip(f"the platform's boto3 is not installed at {LIBS}")
    base = Path(tempfile.mkdtemp(prefix="firebox-test-stem-", dir="/tmp"))
    os.chmod(base, 0o755)
    backend = IsolatedBackend(uid_range=UIDS)
    codes = Codes(base)
    codes.add_files(BOTO3, {"app.py": BOTO3_SOURCE})
    codes.add_files(OWN_BOTO3, {"app.py": BOTO3_SOURCE, "boto3/__init__.py": "__version__ = '0.0-own'\n"})
    codes.add_files(NO_BOTO3, {"app.py": "import json\n\ndef handler(event, context):\n    import sys\n"
                                         "    return {'boto3': 'boto3' in sys.modules}\n"})
    worker = LocalWorker(backend, codes, Logs(), HostRuntimes({"python3.11": Path(PYTHON)}, "x86_64"),  # type: ignore[arg-type]
                         python_libs=LIBS, stem_cells=2)
    run(loop, worker.start())
    try:
        yield worker, codes
    finally:
        run(loop, worker.stop())
        run(loop, backend.close())
        shutil.rmtree(base, ignore_errors=True)


def _kind(worker: LocalWorker, kind: str) -> dict[str, int]:
    return worker.stem_statistics()["kinds"].get(kind, {})  # type: ignore[attr-defined, no-any-return]


def test_a_boto3_function_is_specialised_from_a_boto3_cell(loop, boto3_world) -> None:
    worker, _ = boto3_world

    async def scenario() -> None:
        await _until(lambda: _kind(worker, "python3.11/boto3").get("ready") == 1, "a boto3 cell", 60)
        await _until(lambda: _kind(worker, "python3.11/plain").get("ready") == 2, "the plain cells", 30)
        sandbox = await worker.create_sandbox(spec("b3", BOTO3))
        assert isinstance(sandbox, Sandbox) and sandbox.ready
        assert _kind(worker, "python3.11/boto3")["specialised"] == 1
        assert _kind(worker, "python3.11/plain")["specialised"] == 0
        assert "boto3" in sandbox.spec.command
        import boto3  # the platform's copy is the one the tests' venv has

        answer = json.loads(await _invoke(sandbox))
        assert answer == {"version": boto3.__version__, "file": "/var/lang/lib/firebox-python/boto3/__init__.py",
                          "first": "/var/task"}, answer
        await sandbox.destroy()
        # A function that never imports boto3 keeps a plain cell (and its memory headroom).
        plain = await worker.create_sandbox(spec("nob3", NO_BOTO3))
        assert isinstance(plain, Sandbox)
        assert json.loads(await _invoke(plain)) == {"boto3": False}
        assert _kind(worker, "python3.11/plain")["specialised"] == 1
        await plain.destroy()

    run(loop, scenario())


def test_a_function_shipping_its_own_boto3_imports_its_own(loop, boto3_world) -> None:
    worker, _ = boto3_world

    async def scenario() -> None:
        await _until(lambda: _kind(worker, "python3.11/boto3").get("ready") == 1, "a boto3 cell", 60)
        sandbox = await worker.create_sandbox(spec("own", OWN_BOTO3))
        assert isinstance(sandbox, Sandbox)
        answer = json.loads(await _invoke(sandbox))
        assert answer["version"] == "0.0-own" and answer["file"] == "/var/task/boto3/__init__.py", answer
        assert _kind(worker, "python3.11/boto3")["specialised"] == 0
        assert _kind(worker, "python3.11/plain")["specialised"] == 1
        await sandbox.destroy()

    run(loop, scenario())


PRELOAD = {"modules": ["boto3", "botocore", "six", "certifi", "uuid", "email"],
           "third_party": ["boto3", "botocore", "six", "certifi"], "environ": ["HOME"]}


@pytest.mark.parametrize(("files", "environment", "expected"), [
    ({"app.py": "import boto3\n"}, {}, True),
    ({"app.py": "from botocore.config import Config\n"}, {"MY_VAR": "1"}, True),
    ({"app.py": "import json\n"}, {}, False),  # no boto3: no boto3 memory
    ({"lib/app.py": "x = importlib.import_module('boto3')\n"}, {}, True),
    ({"app.py": "import boto3\n", "six.py": ""}, {}, False),  # its own six comes first
    ({"app.py": "import boto3\n", "uuid.py": ""}, {}, False),  # a stdlib name botocore imports
    ({"app.py": "import boto3\n", "certifi/__init__.py": ""}, {}, False),  # botocore looks for it
    ({"app.py": "import boto3\n", "vendor/botocore/__init__.py": ""}, {}, False),  # may be put on sys.path
    ({"app.py": "import boto3\n", "deps.zip": ""}, {}, False),
    ({"app.py": "import boto3\n", "pkg/uuid.py": ""}, {}, True),  # a submodule, not a top-level name
    ({"app.py": "import boto3\n"}, {"HOME": "/tmp"}, False),  # read by the import
    ({"app.py": "import boto3\n"}, {"OPENSSL_CONF": "/x"}, False),  # read when libcrypto loads
])
def test_boto3_compatible(tmp_path: Path, files: dict[str, str], environment: dict[str, str], expected: bool) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    traits = describe_package(tmp_path)
    assert boto3_compatible(spec("f", "0", environment=environment), traits, PRELOAD) is expected


def test_package_traits_skip_installed_dependencies(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import requests\nimport os, yaml as y\n")
    (tmp_path / "requests").mkdir()
    (tmp_path / "requests" / "api.py").write_text("import boto3\n")
    (tmp_path / "requests-2.0.dist-info").mkdir()
    (tmp_path / "requests-2.0.dist-info" / "RECORD").write_text("requests/api.py,sha256=x,1\n")
    traits = describe_package(tmp_path)
    assert traits.imports == {"requests", "os", "yaml"}
    assert traits.top_level == {"app", "requests"} and traits.complete and not traits.archives


def test_a_planned_population_links_the_whole_tree(tmp_path: Path) -> None:
    code, task = tmp_path / "code", tmp_path / "task"
    (code / "pkg" / "sub").mkdir(parents=True)
    (code / "app.py").write_text("x = 1\n")
    (code / "pkg" / "sub" / "deep.py").write_text("y = 2\n")
    (code / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(code / "run.sh", 0o755)
    (code / "alias.py").symlink_to("app.py")
    (code / "pkgdir").symlink_to("pkg")
    plan = plan_population(code, 16)
    assert plan is not None and plan_population(code, 3) is None  # over the bound: no plan
    task.mkdir()
    populate(code, task, plan)
    assert sorted(str(p.relative_to(task)) for p in task.rglob("*")) == sorted(
        str(p.relative_to(code)) for p in code.rglob("*"))
    assert os.path.samefile(task / "pkg" / "sub" / "deep.py", code / "pkg" / "sub" / "deep.py")  # a link
    assert os.readlink(task / "alias.py") == "app.py" and os.readlink(task / "pkgdir") == "pkg"
    assert (task / "pkg" / "sub").stat().st_mode & 0o777 == 0o755
    assert os.access(task / "run.sh", os.X_OK)


def test_node_functions_whose_variables_act_at_start_take_no_cell() -> None:
    node = {"runtime": "nodejs20.x", "handler": "index.handler"}
    assert stem_eligible(spec("n", "0", environment={"MY_NODE": "x"}, **node))
    for name in ("NODE_OPTIONS", "NODE_PATH", "NODE_EXTRA_CA_CERTS", "UV_THREADPOOL_SIZE", "TZ", "LANG",
                 "LC_ALL", "OPENSSL_CONF", "LD_PRELOAD"):
        assert not stem_eligible(spec("n", "0", environment={name: "x"}, **node)), name
    assert not stem_eligible(spec("c", "0", runtime="provided.al2023", handler="x"))


def test_a_taken_cell_is_replaced_after_the_first_invocation(loop, world) -> None:
    worker, _, _ = world

    async def scenario() -> None:
        await _full(worker)
        spawned = worker.stem_statistics()["spawned"]
        sandbox = await worker.create_sandbox(spec("later", f"{0:064x}"))
        assert isinstance(sandbox, Sandbox)
        # Not while the cold start's first invocation may still run: a spawn blocks the loop.
        assert sandbox.id in worker._owed_refills and worker.stem_statistics()["spawned"] == spawned
        outcome = await worker.invoke(sandbox, spec("later", f"{0:064x}"), request_id="r1", payload=b"{}",
                                      invoked_arn="arn", client_context=None)
        assert outcome.function_error is None and sandbox.id not in worker._owed_refills
        await _full(worker)
        await sandbox.destroy()

    run(loop, scenario())


class _FakeCell:
    def __init__(self, key: CellKey) -> None:
        self.key = key
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def alive(self) -> bool:
        return not self.exit.done()

    async def discard(self) -> None:
        if not self.exit.done():
            self.exit.set_result(-9)


def test_a_pool_starts_at_most_two_cells_at_once(loop, tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = StemCellPool(None, tmp_path / "cells", 5, None)  # type: ignore[arg-type]
        running, peak, failures = 0, 0, [1]

        async def spawn(key: CellKey) -> _FakeCell:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await asyncio.sleep(0.05)
                if failures:
                    failures.pop()
                    raise OSError("a spawn that fails is retried after a back-off")
                return _FakeCell(key)
            finally:
                running -= 1

        pool._spawn = spawn  # type: ignore[method-assign, assignment]
        key = CellKey("python3.11", 512)
        await pool.start([key])
        await _until(lambda: pool.statistics()["ready"] == 5, "a full pool")
        assert peak == 2 and pool.statistics()["failed"] == 1
        taken = [await pool.take(key) for _ in range(3)]
        assert all(cell is not None for cell in taken)
        pool.refill(key)
        await _until(lambda: pool.statistics()["ready"] == 5, "a full pool again")
        assert peak == 2
        await pool.stop()

    run(loop, scenario())


@pytest.mark.parametrize("compiled", [True, False])
def test_a_population_uses_or_removes_the_cells_premade_folders(tmp_path: Path, compiled: bool) -> None:
    code, task = tmp_path / "code", tmp_path / "task"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "mod.py").write_text("y = 2\n")
    if compiled:
        (code / "__pycache__").mkdir()
        (code / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    premade = premade_dirs("python3.11")
    assert premade == ("__pycache__",) and premade_dirs("nodejs20.x") == ()
    task.mkdir()
    for relative in premade:
        (task / relative).mkdir()
    populate(code, task, plan_population(code, 16), premade)
    assert sorted(str(p.relative_to(task)) for p in task.rglob("*")) == sorted(
        str(p.relative_to(code)) for p in code.rglob("*"))


def test_a_stem_cell_becomes_exactly_its_functions_environment() -> None:
    spec_ = importlib.util.spec_from_file_location("_stem_under_test", RUNTIME_DIR / "python" / "stem.py")
    assert spec_ is not None and spec_.loader is not None
    stem = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(stem)
    environ = {"PATH": "/usr/bin:/bin", "LANG": "en_US.UTF-8", "TZ": ":UTC", "GONE": "1"}
    wanted = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OWN": "x", "TZ": ":UTC"}
    stem.become(environ, wanted)
    assert environ == wanted


def test_a_stem_cell_becomes_its_functions_environment_in_os_environ_and_libc() -> None:
    """The real os.environ, changed through its encoded mapping (its own methods, which would
    run Python code per variable, are not called): what Python reads and what a program the
    function starts inherits (libc's environment) are both exactly `wanted`."""
    script = f"""
import importlib.util, json, os, subprocess, sys
spec = importlib.util.spec_from_file_location("_stem_under_test", {str(RUNTIME_DIR / "python" / "stem.py")!r})
stem = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stem)
wanted = {{"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OWN": "x\u00e9", "TZ": ":UTC", "EMPTY": ""}}
def slow_way(*args):
    raise AssertionError("os.environ's own methods were called")
type(os.environ).__setitem__ = type(os.environ).__delitem__ = slow_way
stem.become(os.environ, wanted)
inherited = subprocess.run(["/usr/bin/env", "-0"], capture_output=True, check=True).stdout
print(json.dumps([dict(os.environ), sorted(inherited.decode().split("\\0")[:-1]), os.getenv("OWN")]))
"""
    environment = {"PATH": "/usr/bin:/bin", "LANG": "en_US.UTF-8", "TZ": ":UTC", "GONE": "1"}
    done = subprocess.run([sys.executable, "-I", "-c", script], env=environment, capture_output=True, text=True,
                          check=True)
    seen, inherited, own = json.loads(done.stdout)
    wanted = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OWN": "x\u00e9", "TZ": ":UTC", "EMPTY": ""}
    assert seen == wanted and own == "x\u00e9"
    assert inherited == sorted(f"{name}={value}" for name, value in wanted.items())
