"""Firebox's Python stem cell: a pre-started Python sandbox that is not yet any function's.

Started like the bootstrap (`python3.x -u -S -B -c <loader> /var/runtime/python/stem.py`) in a
normal isolated sandbox whose `/var/task` is still EMPTY and whose environment holds only neutral
values (TZ, LANG, PATH, LD_LIBRARY_PATH, LAMBDA_TASK_ROOT, LAMBDA_RUNTIME_DIR, and the platform's
FIREBOX_RUNTIME_LIBS / AWS_LAMBDA_RUNTIME_API, identical for every Python function). It:

1. loads the bootstrap module (so the interpreter's start-up and every import the runtime needs
   are paid before any function asks for a sandbox);
2. long-polls `GET /2018-06-01/runtime/firebox/specialize`, a Firebox-private route served only
   to stem cells (on the Runtime API socket it was started with, `CONNECTION`, when forked by a
   zygote; else on a new connection to AWS_LAMBDA_RUNTIME_API). The platform answers once it
   has put one function's code in `/var/task`: the body is that function's complete Lambda
   environment as a JSON object;
3. replaces `os.environ` with it and runs the bootstrap's `main()`: init (the handler's module is
   imported now, once) and then the usual `/invocation/next` loop.

From then on the process is exactly a bootstrap-started runtime of that function; the sandbox is
never handed to any other function. Standard library only, like the bootstrap.

Flavours (the argument after the script's path; none = `plain`):

- `plain`: nothing more than the bootstrap is loaded.
- `boto3`: before step 2, `sys.path` is set up exactly as `main()` will set it (task root first,
  then layers, the standard library and FIREBOX_RUNTIME_LIBS, the platform's boto3) and `boto3`
  is imported (which imports `boto3.session` and `botocore.session`; measured: about 23 MB and,
  on a quiet 2-core host, most of a 200+ ms cold start). The worker gives such a cell only to a
  function that imports boto3 itself and whose package holds nothing the import used or looked
  for (`--probe` lists those names), so the function sees exactly the modules a fresh runtime
  would have imported, from the same files.

`stem.py --probe FLAVOUR` (run on the host by `firebox.runtimes.api.probe_stem`) performs the
flavour's preload while recording every top-level module name looked up or added and every
environment variable read, prints them as JSON and exits.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and (sys.path[0] == "" or os.path.abspath(sys.path[0]) == _HERE):
    del sys.path[0]

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

SPECIALIZE_PATH = "/2018-06-01/runtime/firebox/specialize"
BOOTSTRAP = os.path.join(_HERE, "bootstrap.py")
PRELOADS = {"plain": (), "boto3": ("boto3",)}  # flavour -> modules imported before specialising
# A connected socket to the Runtime API that the cell was started with (a zygote's child: see
# zygote.py), used instead of connecting to AWS_LAMBDA_RUNTIME_API.
CONNECTION = None


def load_bootstrap():
    spec = importlib.util.spec_from_file_location("_firebox_bootstrap", BOOTSTRAP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preload(bootstrap, flavour):
    """Import the flavour's modules with sys.path as the function's init will see it."""
    modules = PRELOADS[flavour]
    if modules:
        bootstrap.setup_path(os.environ.get("LAMBDA_TASK_ROOT") or "/var/task")
        for name in modules:
            importlib.import_module(name)


class _Lookups:
    """A meta-path finder that finds nothing and remembers what was looked for."""

    def __init__(self):
        self.names = set()

    def find_spec(self, name, path=None, target=None):
        self.names.add(name.partition(".")[0])  # and finds nothing: the next finder goes on


def probe(flavour):
    """Preload `flavour` recording module lookups and environment reads; print them as JSON."""
    import collections.abc

    bootstrap = load_bootstrap()
    lookups, read = _Lookups(), set()
    environ = os.environ

    class RecordingEnviron(collections.abc.MutableMapping):
        def __getitem__(self, key):
            read.add(key)
            return environ[key]

        def __contains__(self, key):
            read.add(key)
            return key in environ

        def __setitem__(self, key, value):
            environ[key] = value

        def __delitem__(self, key):
            del environ[key]

        def __iter__(self):
            read.add("*")
            return iter(environ)

        def __len__(self):
            return len(environ)

        def copy(self):
            read.add("*")
            return environ.copy()

    before = set(sys.modules)
    sys.meta_path.insert(0, lookups)
    os.environ = RecordingEnviron()  # noqa: B003 - os.getenv and os.environ.get read it; put back below
    try:
        preload(bootstrap, flavour)
    finally:
        os.environ = environ  # noqa: B003
        sys.meta_path.remove(lookups)
    added = {name.partition(".")[0] for name in set(sys.modules) - before}
    modules = sorted(lookups.names | added)
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    report = {
        "flavour": flavour,
        "modules": modules,
        "third_party": [m for m in modules if m not in stdlib and m not in sys.builtin_module_names],
        "environ": sorted(read),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def wait_for_function(address, sock=None):
    """The function's environment (a dict), from the platform's answer to the long poll, and the
    connection it came on (socket, reader), still open: the runtime goes on with it. Asked on
    `sock` when given, else on a new connection to `address`."""
    if sock is None:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host.strip("[]").encode("ascii") or b"127.0.0.1", int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        request = "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: firebox-stem\r\n\r\n" % (SPECIALIZE_PATH, address)
        sock.sendall(request.encode("latin-1"))
        reader = sock.makefile("rb")
        status_line = reader.readline(65537)
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError("no answer from the Runtime API")
        length = 0
        while True:
            line = reader.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = reader.read(length) if length else b""
        if int(parts[1]) != 200:
            raise ValueError("specialize answered %s" % parts[1].decode("latin-1"))
        environment = json.loads(body)
        if not isinstance(environment, dict):
            raise ValueError("specialize answered a non-object")
    except BaseException:
        sock.close()
        raise
    return environment, (sock, reader)


def become(environ, wanted):
    """Make `environ` exactly `wanted`, touching only what differs: each set or unset is a libc
    call that scans the whole environment, and the cell's neutral variables (PATH, LANG, TZ,
    LAMBDA_TASK_ROOT...) mostly stay as they are.

    os.environ itself is changed through its encoded mapping and os.putenv / os.unsetenv, as
    its own methods do, without their Python calls per variable (encode the name, encode the
    value, decode the names while iterating): in a sandbox forked from a zygote each function
    that runs copies the pages its code and objects sit on. Measured under bench/sandboxes.py
    with checkpoints in a copy of the zygote, two runs each way: 0.27-0.30 -> 0.22-0.23 ms
    and 37-44 -> 35-38 page faults per sandbox (what remains is mostly libc's own copies)."""
    data = getattr(environ, "_data", None) if environ is os.environ else None
    if isinstance(data, dict):
        encoding = sys.getfilesystemencoding()
        encoded = {name.encode(encoding, "surrogateescape"): value.encode(encoding, "surrogateescape")
                   for name, value in wanted.items()}
        for key in [key for key in data if key not in encoded]:
            os.unsetenv(key)
            del data[key]
        for key, value in encoded.items():
            if data.get(key) != value:
                os.putenv(key, value)
                data[key] = value
        return
    for name in [name for name in environ if name not in wanted]:
        del environ[name]
    for name, value in wanted.items():
        if environ.get(name) != value:
            environ[name] = value


def main():
    args = sys.argv[2:]
    if args[:1] == ["--probe"]:
        return probe(args[1] if len(args) > 1 else "plain")
    flavour = args[0] if args else "plain"
    if flavour not in PRELOADS:
        sys.stderr.write("firebox stem cell: unknown flavour %r\n" % flavour)
        return 2
    bootstrap = load_bootstrap()
    try:
        preload(bootstrap, flavour)
    except Exception as exc:  # noqa: BLE001 - the platform's libraries are broken: this cell is useless
        sys.stderr.write("firebox stem cell: preloading %s failed: %r\n" % (flavour, exc))
        return 1
    bootstrap.prepare_init()  # what init can do without a function (a zygote's child: done there)
    address = os.environ.get("AWS_LAMBDA_RUNTIME_API", "")
    try:
        environment, connection = wait_for_function(address, CONNECTION)
    except (OSError, ValueError) as exc:
        sys.stderr.write("firebox stem cell: %s\n" % exc)
        return 1
    wanted = {str(k): str(v) for k, v in environment.items()}
    wanted["AWS_LAMBDA_RUNTIME_API"] = address
    become(os.environ, wanted)
    time.tzset()
    bootstrap.forget_changed_listings(wanted.get("LAMBDA_TASK_ROOT") or "/var/task")  # it was empty until now
    if len(sys.argv) > 1:
        sys.argv[1:] = [BOOTSTRAP]  # what a bootstrap-started runtime shows
    # The runtime asks for its first event on the connection it was specialised on: no new
    # connection to open (and for the platform, none to accept) inside the cold start.
    bootstrap.ADOPTED_CONNECTION = connection
    return bootstrap.main()


if __name__ == "__main__":
    sys.exit(main())
