"""The Python bootstrap's own parts, in process: reading the Runtime API's answers however they
are cut into segments, header blocks, event bodies, and the context's environment reads."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from firebox.runtimes.api import RUNTIME_DIR

EVENT = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
         b"Lambda-Runtime-Aws-Request-Id: 8476a536-e9f4-11e8-9739-2dfe598c3fcd\r\n"
         b"Lambda-Runtime-Deadline-Ms: 1764300000000\r\n"
         b"Lambda-Runtime-Trace-Id:  Root=1-5bef4de7;Sampled=1 \t\r\n"
         b"Content-Length: 17\r\n\r\n"
         b'{"name": "bench"}')
ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 15\r\n\r\n{\"status\":\"OK\"}"


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("_bootstrap_under_test", RUNTIME_DIR / "python" / "bootstrap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


class Segments(io.RawIOBase):
    """A connection whose data arrives `size` bytes at a time (each read gets one segment)."""

    def __init__(self, data: bytes, size: int) -> None:
        self._data, self._size = data, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def,override]
        chunk, self._data = self._data[: self._size], self._data[self._size:]
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _client(bootstrap: ModuleType, data: bytes, size: int):  # type: ignore[no-untyped-def]
    client = bootstrap.RuntimeClient("127.0.0.1:9001")
    client._sock = object()  # never written to: these tests only read
    client._reader = io.BufferedReader(Segments(data, size))
    return client


@pytest.mark.parametrize("size", [1, 7, 64, 4096])
def test_an_event_and_a_202_are_read_whatever_their_segments(bootstrap: ModuleType, size: int) -> None:
    client = _client(bootstrap, ACCEPTED + EVENT, size)
    assert client.request_pending_next() == (202, {"content-length": "15"}, b'{"status":"OK"}')
    status, headers, body = client.request_pending_next()
    assert (status, body) == (200, b'{"name": "bench"}')
    assert headers == {
        "content-type": "application/json",
        "lambda-runtime-aws-request-id": "8476a536-e9f4-11e8-9739-2dfe598c3fcd",
        "lambda-runtime-deadline-ms": "1764300000000",
        "lambda-runtime-trace-id": "Root=1-5bef4de7;Sampled=1",
        "content-length": "17",
    }


@pytest.mark.parametrize("size", [1, 4096])
def test_an_answer_without_headers_and_one_with_bare_newlines(bootstrap: ModuleType, size: int) -> None:
    data = (b"HTTP/1.1 204 No Content\r\n\r\n" + b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\n{}"
            + b"HTTP/1.1 200 OK\nContent-Length: 6\n\n\r\n\r\nab")  # a blank CRLF line in the body
    client = _client(bootstrap, data, size)
    assert client.request_pending_next() == (204, {}, b"")
    assert client.request_pending_next() == (200, {"content-length": "2", "x-a": "b"}, b"{}")
    assert client.request_pending_next() == (200, {"content-length": "6"}, b"\r\n\r\nab")


def test_header_lines_lose_their_blanks_and_lines_without_a_colon_are_skipped(bootstrap: ModuleType) -> None:
    block = b"Content-Type: application/json\r\n  X-A :  v 1 \t\r\nno colon here\r\nEmpty:\r\nX-B: a:b\r\n"
    assert bootstrap._parse_headers(block) == {"content-type": "application/json", "x-a": "v 1", "empty": "",
                                               "x-b": "a:b"}


@pytest.mark.parametrize("body, expected", [
    (b'{"a": "\xc3\xa9"}', {"a": "\u00e9"}),
    (b"1", 1),
    (b"\xef\xbb\xbf{}", {}),  # a UTF-8 byte order mark, as json.loads(bytes) takes it
    ('{"a": 1}'.encode("utf-16"), {"a": 1}),
    ('{"a": 1}'.encode("utf-16-le"), {"a": 1}),  # no mark: found by its NUL bytes
    ('{"a": 1}'.encode("utf-32-be"), {"a": 1}),
    (b'"\xed\xa0\x80"', "\ud800"),  # a lone surrogate, as json.loads(bytes) lets it through
])
def test_event_bodies_decode_as_json_loads_of_bytes_does(bootstrap: ModuleType, body: bytes, expected: object) -> None:
    assert bootstrap.unmarshal_request(body, "application/json") == expected


def test_an_event_body_that_is_not_json_is_an_unmarshal_error(bootstrap: ModuleType) -> None:
    for body in (b"", b"{", b"\xff\xfe\xfd"):
        with pytest.raises(bootstrap.FaultException) as caught:
            bootstrap.unmarshal_request(body, "application/json")
        assert caught.value.exception_type == bootstrap.FaultException.UNMARSHAL_ERROR


def test_the_context_reads_the_environment_on_every_invocation(bootstrap: ModuleType,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "before-\u00e9")
    monkeypatch.delenv("AWS_LAMBDA_LOG_GROUP_NAME", raising=False)
    first = bootstrap.LambdaContext("id-1", None, None, 0)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "after")
    monkeypatch.setenv("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/after")
    second = bootstrap.LambdaContext("id-2", None, None, 0)
    assert (first.function_name, first.log_group_name) == ("before-\u00e9", None)
    assert (second.function_name, second.log_group_name) == ("after", "/aws/lambda/after")
    assert [second.identity.cognito_identity_id, second.identity.cognito_identity_pool_id] == [None, None]


def test_the_context_follows_an_environment_replaced_by_the_function(bootstrap: ModuleType,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "environ", {"AWS_LAMBDA_FUNCTION_NAME": "from-a-dict"})
    assert bootstrap.LambdaContext("id", None, None, 0).function_name == "from-a-dict"


def test_results_are_encoded_as_json_dumps_with_aws_defaults(bootstrap: ModuleType) -> None:
    import decimal
    assert bootstrap._encode_json({"a": "\u00e9", "n": decimal.Decimal("2"), "f": decimal.Decimal("0.5")}) == \
        '{"a": "\u00e9", "n": 2, "f": 0.5}'.encode()
    assert bootstrap._encode_json("\ud800") == b'"\\ud800"'  # a lone surrogate is escaped, not an error


# -- the handler module's import -------------------------------------------------------------


@pytest.fixture
def task_root(tmp_path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A task root first on sys.path, and a unique module name; its modules are forgotten after.
    sys.meta_path holds the standard finders only, as in a runtime (pytest adds its own)."""
    import sys
    import uuid

    name = "handler_" + uuid.uuid4().hex[:12]
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.setattr(sys, "meta_path", [finder for finder in sys.meta_path
                                           if getattr(finder, "__module__", "").startswith("_frozen_importlib")])
    yield tmp_path, name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def _counting_import_module(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """importlib.import_module, recording the names it is asked for (the slow way's calls)."""
    import importlib

    calls: list[str] = []
    real = importlib.import_module

    def counting(name: str, package: str | None = None) -> ModuleType:
        calls.append(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", counting)
    return calls


def test_a_plain_handler_module_is_loaded_as_the_path_finder_would_load_it(
        bootstrap: ModuleType, task_root, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    root, name = task_root
    (root / f"{name}.py").write_text("import sys\nSELF = sys.modules[__name__]\ndef handler(e, c):\n    return 1\n")
    expected = importlib.util.find_spec(name)  # what the import system would do (finds, loads nothing)
    assert expected is not None
    calls = _counting_import_module(monkeypatch)
    module = bootstrap.import_handler_module(name)
    assert calls == []  # the short way
    assert sys.modules[name] is module and module.SELF is module
    spec = module.__spec__
    for field in ("name", "origin", "cached", "parent", "has_location", "submodule_search_locations"):
        assert getattr(spec, field) == getattr(expected, field), field
    assert type(spec.loader) is type(expected.loader)
    assert (module.__file__, module.__cached__, module.__package__) == (expected.origin, expected.cached, "")


@pytest.mark.parametrize("neighbour", ["package", "namespace", "extension", "no_source", "finder"])
def test_a_handler_module_with_a_possible_rival_is_imported_the_usual_way(
        bootstrap: ModuleType, task_root, monkeypatch: pytest.MonkeyPatch, neighbour: str) -> None:  # type: ignore[no-untyped-def]
    root, name = task_root
    if neighbour != "no_source":
        (root / f"{name}.py").write_text("WHO = 'module'\n")
    if neighbour == "package":
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("WHO = 'package'\n")
    elif neighbour == "namespace":
        (root / name).mkdir()
    elif neighbour == "extension":
        (root / f"{name}.abi3.so").write_bytes(b"")
    elif neighbour == "no_source":
        (root / f"{name}.pyc").write_bytes(b"")
    else:  # a finder of someone else's ahead of the path finder: it may have a say
        import sys

        monkeypatch.setattr(sys, "meta_path", [_FindsNothing(), *sys.meta_path])
    calls = _counting_import_module(monkeypatch)
    try:
        module = bootstrap.import_handler_module(name)
    except ImportError:  # the empty .so or .pyc: the import system's own verdict
        assert neighbour in ("extension", "no_source")
    else:
        assert module.WHO == ("package" if neighbour == "package" else "module")
    assert calls == [name]


class _FindsNothing:
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        return None


def test_a_handler_module_that_fails_is_not_left_half_imported(
        bootstrap: ModuleType, task_root, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    root, name = task_root
    (root / f"{name}.py").write_text("import a_module_nobody_has_" + name + "\n")
    calls = _counting_import_module(monkeypatch)
    with pytest.raises(ImportError, match="No module named"):
        bootstrap.import_handler_module(name)
    assert name not in sys.modules and calls == []


def _filled_finder(path: str):  # type: ignore[no-untyped-def]
    """The path finder's FileFinder for `path`, its listing read (as after an import there)."""
    from importlib import _bootstrap_external, machinery

    finder = machinery.FileFinder(path, *_bootstrap_external._get_supported_file_loaders())
    finder.find_spec("a_module_nobody_has")
    return finder


def test_only_the_listings_of_folders_a_sandbox_changes_are_forgotten(
        bootstrap: ModuleType, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import sys
    from importlib import _bootstrap_external

    root = tmp_path / "task"
    root.mkdir()
    (root / "lib").mkdir()
    (tmp_path / "taskforce").mkdir()  # the task root's name is a prefix of its name, not a parent
    (tmp_path / "writable").mkdir()
    monkeypatch.setattr(bootstrap, "WRITABLE_FOLDERS", (str(tmp_path / "writable"),))  # for /tmp, /dev/shm
    standard = os.path.dirname(os.__file__)
    kept = {path: _filled_finder(path) for path in (standard, str(tmp_path), str(tmp_path / "taskforce"))}
    forgotten = {path: _filled_finder(path) for path in (str(root), str(root / "lib"), str(tmp_path / "writable"))}
    listings = {path: finder._path_cache for path, finder in kept.items()}
    cache = {**kept, **forgotten, "relative/folder": _filled_finder(str(tmp_path)), "/a/missing/folder": None}
    monkeypatch.setattr(sys, "path_importer_cache", cache)
    epoch = _bootstrap_external._NamespacePath._epoch

    # The task root's folder gets a module, and its mtime is set back: only a forgotten listing sees it.
    old = os.stat(root)
    (root / "arrived.py").write_text("X = 1\n")
    os.utime(root, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert forgotten[str(root)].find_spec("arrived") is None

    bootstrap.forget_changed_listings(str(root) + "/")
    assert set(cache) == set(kept) | set(forgotten)  # the relative path and the missing folder are gone
    for path, finder in kept.items():
        assert finder._path_mtime != -1 and finder._path_cache is listings[path], path
        assert finder.find_spec("a_module_nobody_has") is None and finder._path_cache is listings[path]
    assert all(finder._path_mtime == -1 for finder in forgotten.values())
    assert forgotten[str(root)].find_spec("arrived") is not None
    assert _bootstrap_external._NamespacePath._epoch == epoch + 1


class _CountedCache(dict):  # type: ignore[type-arg]
    """sys.path_importer_cache that counts the walks over it."""

    walks = 0

    def items(self):  # type: ignore[no-untyped-def]
        self.walks += 1
        return super().items()


def test_a_zygote_plans_the_forgetting_and_a_child_walks_the_cache_again_only_once_it_grew(
        bootstrap: ModuleType, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    root, writable = tmp_path / "task", tmp_path / "writable"
    root.mkdir()
    writable.mkdir()
    monkeypatch.setattr(bootstrap, "WRITABLE_FOLDERS", (str(writable),))
    monkeypatch.setattr(bootstrap, "_LISTINGS_PLAN", None)
    standard = os.path.dirname(os.__file__)
    kept, task, scratch = (_filled_finder(path) for path in (standard, str(root), str(writable)))
    cache = _CountedCache({standard: kept, str(root): task, str(writable): scratch, "/a/missing/folder": None})
    monkeypatch.setattr(sys, "path_importer_cache", cache)

    bootstrap.plan_changed_listings(str(root))  # the zygote: forgets once, drops the missing folder
    assert "/a/missing/folder" not in cache
    for finder in (kept, task, scratch):
        finder.find_spec("a_module_nobody_has")  # listings read again, as the zygote's later imports would
    walks = cache.walks

    bootstrap.forget_changed_listings(str(root))  # a child, its cache as at the fork
    assert cache.walks == walks
    assert task._path_mtime == -1 and scratch._path_mtime == -1 and kept._path_mtime != -1

    cache["/another/missing/folder"] = None  # an import met a new folder: the cache grew
    task.find_spec("a_module_nobody_has")
    bootstrap.forget_changed_listings(str(root))
    assert cache.walks == walks + 1 and "/another/missing/folder" not in cache
    assert task._path_mtime == -1 and kept._path_mtime != -1
    bootstrap.forget_changed_listings(str(tmp_path / "elsewhere"))  # another task root: walked too
    assert cache.walks == walks + 2


def _compiled(root, name: str, source: str, **compile_options) -> None:  # type: ignore[no-untyped-def]
    import py_compile

    (root / f"{name}.py").write_text(source)
    py_compile.compile(str(root / f"{name}.py"), doraise=True, **compile_options)


def _counting_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """importlib's _load (the way without ready bytecode), recording the names it loads."""
    from importlib import _bootstrap

    calls: list[str] = []
    real = _bootstrap._load

    def counting(spec):  # type: ignore[no-untyped-def]
        calls.append(spec.name)
        return real(spec)

    monkeypatch.setattr(_bootstrap, "_load", counting)
    return calls


def test_a_handler_module_with_its_bytecode_is_loaded_from_it_as_source_file_loader_would(
        bootstrap: ModuleType, task_root, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    root, name = task_root
    # The bytecode says 'bytecode'; then the source changes without changing its size or mtime:
    # a timestamp-checked loader (the path finder's) still runs the bytecode.
    _compiled(root, name, "import sys\nSELF = sys.modules[__name__]\nWHO = 'bytecode'\n")
    stat = os.stat(root / f"{name}.py")
    (root / f"{name}.py").write_text("import sys\nSELF = sys.modules[__name__]\nWHO = 'source__'\n")
    os.utime(root / f"{name}.py", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    expected = importlib.util.find_spec(name)
    assert expected is not None and expected.loader is not None
    namespace: dict[str, object] = {}
    exec(expected.loader.get_code(name), namespace)  # type: ignore[attr-defined]
    assert namespace["WHO"] == "bytecode"

    calls, loads = _counting_import_module(monkeypatch), _counting_loads(monkeypatch)
    module = bootstrap.import_handler_module(name)
    assert calls == [] and loads == []  # neither the import system nor _load
    assert module.WHO == "bytecode" and sys.modules[name] is module and module.SELF is module
    spec = module.__spec__
    for field in ("name", "origin", "cached", "parent", "has_location", "submodule_search_locations"):
        assert getattr(spec, field) == getattr(expected, field), field
    assert type(spec.loader) is type(expected.loader) and spec.loader.path == expected.loader.path  # type: ignore[attr-defined]
    assert spec._initializing is False
    assert (module.__file__, module.__cached__, module.__package__, module.__loader__) == \
        (expected.origin, expected.cached, "", spec.loader)
    assert module.WHO.__class__ is str and module.__dict__["__builtins__"] is not None
    assert name in sys.modules and list(sys.modules)[-1] == name


@pytest.mark.parametrize("bytecode", ["stale", "hash_based", "not_code"])
def test_bytecode_the_path_finder_would_not_trust_is_left_to_it(
        bootstrap: ModuleType, task_root, monkeypatch: pytest.MonkeyPatch, bytecode: str) -> None:  # type: ignore[no-untyped-def]
    import marshal
    import py_compile

    root, name = task_root
    if bytecode == "hash_based":
        _compiled(root, name, "WHO = 'source'\n", invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    else:
        _compiled(root, name, "WHO = 'bytecode'\n")
        if bytecode == "stale":
            (root / f"{name}.py").write_text("WHO = 'source'\n")  # another size
        else:
            cached = importlib.util.cache_from_source(str(root / f"{name}.py"))
            with open(cached, "r+b") as handle:
                header = handle.read(16)
                handle.seek(0)
                handle.write(header + marshal.dumps("not a code object"))
                handle.truncate()
    loads = _counting_loads(monkeypatch)
    try:
        module = bootstrap.import_handler_module(name)
    except ImportError:
        assert bytecode == "not_code"  # the import system's own verdict on it
    else:
        assert module.WHO == "source"
    assert loads == [name]


def test_a_handler_module_that_fails_from_its_bytecode_is_not_left_half_imported(
        bootstrap: ModuleType, task_root, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    root, name = task_root
    _compiled(root, name, "raise ValueError('at import')\n")
    loads = _counting_loads(monkeypatch)
    with pytest.raises(ValueError, match="at import"):
        bootstrap.import_handler_module(name)
    assert name not in sys.modules and loads == []


def test_prepared_init_is_redone_only_where_the_environment_changed(
        bootstrap: ModuleType, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import logging
    import sys

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.Formatter.converter)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(tmp_path))
    for name in ("FIREBOX_RUNTIME_LIBS", "AWS_LAMBDA_LOG_FORMAT", "AWS_LAMBDA_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(bootstrap, "_PREPARED", None)

    def ours() -> list[tuple[str, str]]:
        return [(type(h).__name__, type(h.formatter).__name__) for h in root.handlers if h not in saved[0]]

    try:
        bootstrap.prepare_init()
        first = bootstrap._PREPARED
        assert ours() == [("LambdaLoggerHandler", "TextFormatter")] and root.level == saved[1]
        assert sys.path[0] == str(tmp_path)
        bootstrap.prepare_init()  # nothing changed: nothing redone
        assert bootstrap._PREPARED[4] is first[4] and len(ours()) == 1 and sys.path.count(str(tmp_path)) == 1
        monkeypatch.setenv("AWS_LAMBDA_LOG_FORMAT", "JSON")
        monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", "DEBUG")
        bootstrap.prepare_init()
        assert ours() == [("LambdaLoggerHandler", "JsonFormatter")] and root.level == logging.DEBUG
        assert bootstrap._PREPARED[4] is not first[4] and bootstrap._LOG_FORMAT_JSON is True
        monkeypatch.delenv("AWS_LAMBDA_LOG_FORMAT")
        monkeypatch.delenv("AWS_LAMBDA_LOG_LEVEL")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.setenv("LAMBDA_TASK_ROOT", str(elsewhere))
        bootstrap.prepare_init()  # back to text at the root's own level; sys.path from the start
        assert ours() == [("LambdaLoggerHandler", "TextFormatter")] and root.level == saved[1]
        assert sys.path[0] == str(elsewhere) and str(tmp_path) not in sys.path and os.getcwd() == str(elsewhere)
    finally:
        for handler in list(root.handlers):
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])
        logging.Formatter.converter = saved[2]
        bootstrap._PREPARED = None


# The trace ID variable, in a Python of its own: it changes the process's C environment.
TRACE_ID_SCRIPT = r"""
import ctypes, importlib.util, json, os, subprocess, sys
spec = importlib.util.spec_from_file_location("_bootstrap_under_test", sys.argv[1])
bootstrap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bootstrap)
variable, name = bootstrap.TRACE_ID_VARIABLE, "_X_AMZN_TRACE_ID"
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p

def views():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('_X_AMZN_TRACE_ID'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    c_value = libc.getenv(name.encode())
    return [os.environ.get(name), None if c_value is None else c_value.decode(), child]

def rss_kb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

out = {}
variable.set("Root=1-first;Sampled=0")
out["first"] = views()
os.environ[name] = "set by the function"
variable.set("Root=1-second;Sampled=1")
out["after_the_function_set_it"] = views()
del os.environ[name]
variable.set("Root=1-third;Sampled=0")
out["after_the_function_unset_it"] = views()
variable.set("R" * 1000)
out["long"] = [len(v) for v in views()]
variable.set("short again")
out["short_again"] = views()
values = ["Root=1-%08x-%024x;Parent=%016x;Sampled=0" % (i, 7919 * i, 31 * i) for i in range(200000)]
before = rss_kb()
for value in values:
    variable.set(value)
out["growth_kb"] = rss_kb() - before
out["last"] = views()[:2]
print(json.dumps(out))
"""


def test_the_trace_id_variable_reaches_every_view_and_costs_no_memory_per_value(tmp_path: Path) -> None:
    script = tmp_path / "trace_id.py"
    script.write_text(TRACE_ID_SCRIPT)
    done = subprocess.run([sys.executable, "-S", str(script), str(RUNTIME_DIR / "python" / "bootstrap.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["first"] == ["Root=1-first;Sampled=0"] * 3  # os.environ, the C environment, a child
    assert out["after_the_function_set_it"] == ["Root=1-second;Sampled=1"] * 3
    assert out["after_the_function_unset_it"] == ["Root=1-third;Sampled=0"] * 3
    assert out["long"] == [1000] * 3 and out["short_again"] == ["short again"] * 3
    last = "Root=1-%08x-%024x;Parent=%016x;Sampled=0" % (199999, 7919 * 199999, 31 * 199999)
    assert out["last"] == [last, last]
    # os.environ's setenv kept a copy of each distinct value: about 26 MB for these 200,000.
    assert out["growth_kb"] < 2048, out["growth_kb"]
