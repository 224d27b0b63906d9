"""Firebox's Python zygote: one pre-started, pre-imported interpreter from which isolated
sandboxes are forked (the SOCK / OpenLambda idea), instead of starting bubblewrap and a new
interpreter for each.

Started by the platform (`firebox.worker.backends.zygote`) as root, as
`python3.x -u -S -B zygote.py FD` with FD a SOCK_SEQPACKET control socket (its first message:
the configuration, JSON), stdin
/dev/null and an environment holding only the start-up variables of the functions it will serve
(TZ, LANG, PATH, LD_LIBRARY_PATH...: the platform keeps one zygote per distinct set). Standard
library only, like the bootstrap.

The zygote itself
-----------------
1. Enters a private mount namespace and a new, empty network namespace, builds a read-only root
   shaped exactly like a bubblewrap sandbox's (the host's /usr and /lib* symlinks, the backend's
   minimal /etc, a small /dev, /var/runtime, the extra binds, empty /var/task and /tmp), keeps a
   bind of the host's /proc (a new proc may only be mounted where a full one is visible), and
   pivots into it. From then on every path it imports from is the path a sandbox sees.
2. Loads the runtime (`bootstrap.py`, `stem.py`) and the flavour's preloads (boto3), rehearses
   the runtime so its code is warm (`rehearse`), does the part of the runtime's init that needs
   no function (`bootstrap.prepare_init`: measured, 50 fewer pages copied per forked sandbox),
   freezes the garbage collector's generations (so
   that children's collections do not write to, and copy, the shared pages), learns which pages
   a stem cell writes on its way to its first invocation (`learn_working_set`; its cells copy
   them while idle, one madvise per run of pages: `prefault`), takes the small-object
   allocator's scattered free blocks for good (`fill_pool_holes`: a child's new objects then go
   to fresh pages), says `ready` and serves spawn requests, single-threaded.

A spawn (one per sandbox)
-------------------------
The platform sends a JSON request and fds (SCM_RIGHTS): a socket on which the child alone reads
the sandbox's private part (its environment and command: the zygote never reads it, so no trace
of one function's variables can stay in the memory later children inherit), the sandbox's
network namespace (made by
the platform, the Runtime API listener inside), its cgroup `tasks` files, its code directory as a
detached read-only mount (open_tree: a bind from the platform's mount namespace could not reach
the zygote's), the write ends of its stdout and stderr pipes and, for the runtime kinds (not
`script`), the runtime's end of its Runtime API socketpair. The zygote forks the SANDBOX
process as pid 1 of a new pid namespace (`fork_into_new_pid_namespace`), tells the platform its
pid, and goes back to waiting. The SANDBOX, as root:

1. joins the network namespace and the cgroups (so everything below is charged to the sandbox);
   rewrites its command line and environment areas to the sandbox's (`show_as`);
2. enters new mount, ipc and uts namespaces: attaches the code directory on /var/task, mounts a
   tmpfs of EphemeralStorage bytes on /tmp, a small one on /dev/shm, a new devpts instance on
   /dev/pts and a new /proc over the host's; sets the hostname;
3. sets the rlimits and drops to the sandbox's host uid (no supplementary groups: every
   capability is gone), then unshares a user namespace (uid 993 / gid 990 mapped to that uid)
   and a cgroup namespace. The mount, ipc and uts namespaces belong to the host's user
   namespace, so nothing inside can change them, whatever it holds in its own;
4. drops every capability of its user namespace (bounding set, effective, permitted,
   inheritable, ambient), sets no_new_privs, installs the platform's seccomp filter (the
   bubblewrap backend's deny-list plus refusing new user namespaces through clone and clone3);
5. says `ready` (or why not) on the control socket, closes it, and becomes the runtime: takes
   stdout/stderr and the Runtime API socket (as fd 3, close-on-exec: the runtime talks to the
   platform on it, and no process the function starts inherits it), closes every other fd,
   starts a new session, replaces its environment with the function's and runs the command it
   was asked for, `bootstrap.py` or `stem.py [flavour]`, with the modules the zygote loaded. The
   zygote reaps it and reports its exit status.

The runtime is pid 1 of its namespace, with no reaper above it (bubblewrap puts its own init
there). A forked Python process dirties about 0.7 MB just by running, and an init forked before
the runtime would keep its own copy of every page the runtime then writes: measured, 1.3 MB more
per sandbox (4.4 instead of 3.1 MB PSS) and a quarter fewer sandboxes started per second. What
being pid 1 changes, inside the sandbox only: the kernel does not deliver to pid 1 a signal sent
from inside its namespace unless a handler is installed (a self-sent SIGTERM with the default
action does nothing; SIGKILL from the platform, the OOM killer and faults work as usual), and an
orphaned grandchild is not reaped (a zombie, counted by pids.max, until the sandbox ends).

Why one file of about 1,050 lines (over the house's 600): every module the zygote imports is in the `sys.modules` of
every sandbox forked from it, that is, visible to every function (a runtime exec'd by bubblewrap
has only the bootstrap's). Its parts (the root, the runtime, the rehearsal and working set, a
spawn, the serving loop) stay here so that the zygote adds no module of its own beyond what it
runs as (`__main__`) and the standard library it needs; they come in that order, one banner
each.

What else differs from an exec'd runtime: /proc/self/cmdline and environ end in padding NULs;
modules the zygote needed for itself (ctypes, select, gc) are imported already; every child
shares the zygote's address-space layout (ASLR is per zygote, not per sandbox, as in Android's
zygote) and hash seed. Each child reseeds `random` (`fork_plain`).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and (sys.path[0] == "" or os.path.abspath(sys.path[0]) == _HERE):
    del sys.path[0]

import base64  # noqa: E402
import ctypes  # noqa: E402
import errno  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import runpy  # noqa: E402  (the `script` kind: imported once here, not in every child)
import select  # noqa: E402
import signal  # noqa: E402
import _signal  # noqa: E402  (see run_runtime)
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402

RUNTIME_API_FD = 3  # where a sandbox's runtime finds its Runtime API socket, when it has one
SANDBOX_UID = 993
SANDBOX_GID = 990
MAX_MESSAGE = 1 << 20
_ROOM_VARIABLE = "FIREBOX_ZYGOTE_ROOM"  # the platform's padding of the environment area (show_as)
MAX_FDS = 16

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SYS_PIVOT_ROOT = 155  # x86_64
SYS_CAPSET = 126  # x86_64
SYS_MOVE_MOUNT = 429
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_POPULATE_WRITE = 23  # Linux 5.14
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def mount(source, target, fstype=None, flags=0, data=None):
    enc = lambda value: value.encode() if isinstance(value, str) else value  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
           "mount %s on %s" % (source, target))


def bind(source, target, flags=MS_NOSUID | MS_NODEV):
    """A recursive read-only bind (two calls: the kernel ignores MS_RDONLY on the first)."""
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def unshare(flags):
    _check(_libc.unshare(flags), "unshare(%#x)" % flags)


def prctl(option, arg2=0, arg3=0):
    _check(_libc.prctl(option, arg2, arg3, 0, 0), "prctl(%d)" % option)


# --- the zygote's root ------------------------------------------------------------------------


def build_root(config):
    """Private mount and network namespaces, a bubblewrap-shaped read-only root, pivot into it."""
    unshare(CLONE_NEWNS | CLONE_NEWNET)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = config["root"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")

    def at(path):
        return os.path.join(root, path.lstrip("/"))

    def mkdirs(path):
        os.makedirs(at(path), mode=0o755, exist_ok=True)

    mkdirs("/usr")
    bind("/usr", at("/usr"), 0)
    for name in ("bin", "sbin", "lib", "lib64", "lib32"):
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), at(host))
        elif os.path.isdir(host):
            mkdirs(host)
            bind(host, at(host), 0)
    mkdirs("/etc")
    bind(config["etc"], at("/etc"))
    for name in config["etc_binds"]:
        bind("/etc/" + name, at("/etc/" + name))
    make_dev(at("/dev"))
    mkdirs("/proc")
    mount("/proc", at("/proc"), None, MS_BIND | MS_REC)  # covered by each sandbox's own proc
    for path in ("/var/task", "/var/runtime", "/tmp"):
        mkdirs(path)
    bind(config["runtime_dir"], at("/var/runtime"))
    for host, target in config["extra_binds"]:
        mkdirs(target)
        bind(host, at(target))
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def make_dev(dev):
    """A small /dev like bubblewrap's --dev: the harmless devices, bound from the host."""
    os.makedirs(dev, mode=0o755, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=0755,size=64k")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        open(os.path.join(dev, name), "w").close()
        mount("/dev/" + name, os.path.join(dev, name), None, MS_BIND)
    os.mkdir(os.path.join(dev, "shm"), 0o755)
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore"), ("ptmx", "pts/ptmx")):
        os.symlink(target, os.path.join(dev, name))
    mount(None, dev, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID)


# --- the runtime ------------------------------------------------------------------------------


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Runtime:
    """What the zygote loaded once for every child: the bootstrap and the stem cell code (and,
    for the `boto3` flavour, boto3); nothing for the `script` flavour."""

    def __init__(self, flavour, seccomp):
        self.flavour = flavour
        self.privileges = Privileges(seccomp)
        self.working_set = b""  # see learn_working_set and page_runs
        if flavour != "script":
            self.stem = load("_firebox_stem", "/var/runtime/python/stem.py")
            self.bootstrap = self.stem.load_bootstrap()
            self.stem.preload(self.bootstrap, flavour)
            # From here on the stem uses what is loaded (in the rehearsal and in every child).
            self.stem.load_bootstrap = lambda: self.bootstrap
            self.stem.preload = lambda bootstrap, flavour: None

    def run(self, kind, argv, api=None):
        """The child's command, in process: `bootstrap`, `stem` or `script` (argv: the script
        and its arguments); `api`, the fd of the runtime's Runtime API socket (else it connects
        to AWS_LAMBDA_RUNTIME_API). Returns its exit status."""
        if kind == "script":
            sys.argv = list(argv)
            sys.path[0:0] = [os.path.dirname(argv[0])]
            runpy.run_path(argv[0], run_name="__main__")
            return 0
        connection = socket.socket(fileno=api) if api is not None else None
        if kind == "stem":
            prefault(self.working_set)  # idle now: the cold start will not fault these in
            sys.argv = ["-c", self.stem.__file__] + ([] if self.flavour == "plain" else [self.flavour])
            self.stem.CONNECTION = connection
            return self.stem.main()
        sys.argv = ["-c", self.bootstrap.__file__]
        if connection is not None:
            self.bootstrap.ADOPTED_CONNECTION = (connection, connection.makefile("rb"))
        return self.bootstrap.main()


# --- the rehearsal ----------------------------------------------------------------------------

REHEARSAL_INVOCATIONS = 64
REHEARSAL_MODULE = "firebox_zygote_rehearsal"
REHEARSAL_HANDLER = "def handler(event, context):\n    return {'echo': event, 'left': context.get_remaining_time_in_millis()}\n"
REHEARSAL_EVENT = b'{"rehearsal": [1, 2.5, "three", null, true]}'
# The probe of `learn_working_set`: the least a function does, so that the pages it writes are
# pages every cell writes (a bigger handler's objects land on pages a hello never touches).
PROBE_HANDLER = "def handler(event, context):\n    return None\n"
PROBE_EVENT = b"{}"


def rehearse(runtime):
    """Run the runtime once, here, before any child is forked: a stem cell's whole life
    (`stem.main()`: the specialisation long poll, then `bootstrap.main()`) with a small handler
    against a Runtime API played by a forked helper, for REHEARSAL_INVOCATIONS invocations,
    then put back every piece of state it changed (see `_RehearsalState`).

    Why: CPython 3.11 writes into a function's code object the first times it runs (warm-up
    counters, then its specialised instructions), and builds caches lazily (import machinery,
    json, logging). In a child those writes copy shared pages. Done once here, the children run
    code that is already warm: measured, 0.5 to 0.8 MB less private memory per sandbox. What the
    rehearsal leaves behind is only that: warm code objects and caches of modules the runtime
    loads anyway.

    Returns whether the runtime served every invocation of the rehearsal (the platform warns
    when it did not: until a 202 of the helper declared one byte too many, the runtime gave up
    after the first, and every child warmed that code itself); None for the `script` kind."""
    if runtime.flavour == "script":
        return None
    state = _RehearsalState()
    stage = _RehearsalStage([REHEARSAL_INVOCATIONS])
    with stage:
        try:
            sys.argv = ["-c", runtime.stem.__file__, runtime.flavour]
            runtime.stem.main()
        finally:
            state.restore(runtime.bootstrap)  # before /tmp goes: the runtime's cwd is there
    return stage.complete


def learn_working_set(runtime):
    """The pages a stem cell writes from its specialisation to the end of its first
    invocation, learnt once: a probe forked from the finished zygote lives a cell's life (one
    invocation, as in `rehearse`), and when it has posted its result and waits for its next
    event, idle as a warm sandbox, this zygote reads which pages it then holds alone
    (/proc/<probe>/pagemap: present and exclusively mapped). Each new stem cell writes those
    pages while it is still idle (`prefault`), so a cold start does not pay their copy-on-write
    faults (measured: a cell's time from specialisation to its first GET /next went from 2.5
    to 1.9 ms); a cell holds them privately a little earlier than it would have anyway.

    Read then, by this zygote, not by the probe at its end: its end (the helper hangs up, the
    runtime raises, reports and returns) and its own reading of its pages write pages no cell
    writes. And the probe serves the least a function does (PROBE_HANDLER, PROBE_EVENT). Every
    page learnt that a cell would not write costs each cell 4 KB: measured with `prefault`'s
    madvise, 611 pages learnt and 3.09 MB of PSS per specialised hello cell before these two
    changes, 561 and 2.99 MB after (2.93 MB without prefaulting)."""
    if runtime.flavour == "script":
        return frozenset()
    waiting_read, waiting_write = os.pipe()  # the helper: "the probe waits for its next event"
    resume_read, resume_write = os.pipe()  # this zygote: "read; hang up on it now"
    pipes = (waiting_read, waiting_write, resume_read, resume_write)
    try:
        with _RehearsalStage([1], pause=pipes, handler=PROBE_HANDLER, event=PROBE_EVENT) as stage:
            os.close(waiting_write)
            os.close(resume_read)
            probe = fork_plain()  # as a cell is forked: it writes the pages a cell writes
            if probe == 0:
                try:
                    for fd in (waiting_read, resume_write):
                        os.close(fd)
                    sys.argv = ["-c", runtime.stem.__file__, runtime.flavour]
                    runtime.stem.main()
                finally:
                    os._exit(0)
            try:
                # b"." once the probe waits; b"!" (it fell short) or b"" (the helper died): none.
                pages = frozenset(address for address, exclusive in _private_pages(probe) if exclusive) \
                    if os.read(waiting_read, 1) == b"." else frozenset()
            finally:
                os.write(resume_write, b".")
                os.waitpid(probe, 0)
    finally:
        for fd in pipes:
            try:
                os.close(fd)
            except OSError:
                pass  # closed above
    return pages if stage.complete else frozenset()


def _private_pages(pid="self"):
    """(address, exclusively mapped) of every present page of a process's writable private
    mappings (this one's, or a child's)."""
    with open("/proc/%s/maps" % pid) as maps:
        regions = [line.split() for line in maps]
    with open("/proc/%s/pagemap" % pid, "rb") as pagemap:
        for region in regions:
            perms = region[1]
            if not perms.startswith("rw") or perms[3] != "p" or (len(region) > 5 and region[5].startswith("[v")):
                continue
            start, end = (int(bound, 16) for bound in region[0].split("-"))
            pagemap.seek(start // _PAGE * 8)
            entries = pagemap.read((end - start) // _PAGE * 8)
            for index, (entry,) in enumerate(struct.iter_unpack("Q", entries)):
                if entry >> 63 & 1:  # present
                    yield start + index * _PAGE, bool(entry >> 56 & 1)


def page_runs(pages):
    """Page addresses -> bytes of (start, length) pairs of native u64, one per run of contiguous
    pages. Bytes, not a tuple of ints: reading those would write to the ints' reference
    counts, that is, copy the zygote's pages they live on, in every cell."""
    runs = []
    for address in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] == address:
            runs[-1][1] += _PAGE
        else:
            runs.append([address, _PAGE])
    return b"".join(struct.pack("QQ", start, length) for start, length in runs)


def prefault(runs):
    """Fault in, writable, the working set's pages this process still shares (`runs`, from
    `page_runs`): their copy-on-write copies happen now instead of in the cold start. One
    madvise(MADV_POPULATE_WRITE) per run, so nothing is allocated per page: the list of every
    page's (address, exclusive) that used to be built here copied pages of its own, 0.3 MB per
    cell (measured: 3.38 against 3.09 MB of PSS per specialised hello cell).
    A run the zygote has unmapped since fails alone (ENOMEM); a kernel older than 5.14 does
    not know the advice (EINVAL), and its cells fault these pages in their cold start."""
    for start, length in struct.iter_unpack("QQ", runs):
        if _libc.madvise(start, length, MADV_POPULATE_WRITE) != 0 and ctypes.get_errno() == errno.EINVAL:
            return


_PAGE = os.sysconf("SC_PAGE_SIZE")

# Kept alive for the zygote's life, never read: see fill_pool_holes.
_HOLE_FILLERS = []


def fill_pool_holes():
    """Take every free block left in the small-object allocator's partly used pools, for good.
    A child allocates its new objects in the first free blocks of their size class, and what
    the zygote freed while it started left such blocks scattered over many pages it shares
    with its children: each object a child made there copied a page of its own. Filled, they
    send the child's objects to fresh pools, a few pages of them. Measured (bench/sandboxes.py,
    3 alternated runs of 200 sandboxes, two copies of one tree): 3,000-3,600 blocks filled
    (about 0.2 MB, shared); per sandbox 645-656 -> 635-643 page faults, PSS 2.25-2.30 ->
    2.22-2.24 MB (446-456 -> 457-462 per GB); the zygote's own faults per spawn 133-135 ->
    131-133.
    The counts come from sys._debugmallocstats (CPython's own report, to stderr, read here
    through a memfd); a size class is filled with objects of exactly its size: object() (16
    bytes), a two-digit int (32) and bytes objects (33 bytes + their length) above."""
    report = os.memfd_create("firebox-mallocstats")
    saved = os.dup(2)
    try:
        os.dup2(report, 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
        os.lseek(report, 0, os.SEEK_SET)
        with os.fdopen(os.dup(report), "rb") as text:
            lines = text.read().decode("ascii", "replace").splitlines()
    finally:
        os.close(saved)
        os.close(report)
    for line in lines:  # "class   size   num pools   blocks in use  avail blocks"
        fields = line.split()
        if len(fields) != 5 or not all(field.isdigit() for field in fields):
            continue
        size, free = int(fields[1]), int(fields[4])
        if size == 16:
            make = object
        elif size == 32:
            make = (1 << 40).__add__
        else:
            make = bytes
        argument = () if size == 16 else ((1,) if size == 32 else (size - 33,))
        _HOLE_FILLERS.extend(make(*argument) for _ in range(free))


class _RehearsalStage:
    """The rehearsal's scenery: the handler module on a small /tmp, and a forked helper
    playing the Runtime API on 127.0.0.1:9001 of the zygote's own network namespace for each
    session (one connection each: the specialisation, then that many invocations)."""

    def __init__(self, sessions, pause=None, handler=REHEARSAL_HANDLER, event=REHEARSAL_EVENT):
        self.sessions = sessions
        self.handler, self.event = handler, event
        # (waiting_read, waiting_write, resume_read, resume_write): once the last session's
        # runtime has asked for its next event, the helper says so on waiting_write and hangs
        # up only when resume_read says (learn_working_set reads the runtime's pages between).
        self.pause = pause

    def __enter__(self):
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        try:
            with open("/tmp/%s.py" % REHEARSAL_MODULE, "w") as handle:
                handle.write(self.handler)
            listener = _rehearsal_listener()
            self.helper = os.fork()
            if self.helper == 0:
                status = 3  # some session fell short (or the helper failed)
                try:
                    if self.pause is not None:
                        os.close(self.pause[0])
                        os.close(self.pause[3])
                    last = len(self.sessions) - 1
                    served = [_play_runtime_api(listener, invocations, self.event, self.pause if number == last else None)
                              for number, invocations in enumerate(self.sessions)]
                    status = 0 if served == list(self.sessions) else 3
                finally:
                    os._exit(status)
            listener.close()
        except BaseException:
            _check(_libc.umount2(b"/tmp", MNT_DETACH), "umount the rehearsal's /tmp")
            raise
        self.environ = os.environ.get("AWS_LAMBDA_RUNTIME_API")
        os.environ["AWS_LAMBDA_RUNTIME_API"] = "127.0.0.1:%d" % _REHEARSAL_PORT
        return self

    def __exit__(self, *exc_info):
        if self.environ is None:
            os.environ.pop("AWS_LAMBDA_RUNTIME_API", None)
        else:
            os.environ["AWS_LAMBDA_RUNTIME_API"] = self.environ
        _, status = os.waitpid(self.helper, 0)
        self.complete = os.waitstatus_to_exitcode(status) == 0  # every session played in full
        _check(_libc.umount2(b"/tmp", 0), "umount the rehearsal's /tmp")


class _RehearsalState:
    """What `bootstrap.main()` changes in the process, saved before the rehearsal and put back
    after it, so that a child starts exactly as it would have without one."""

    def __init__(self):
        import builtins
        import logging

        self.environ = dict(os.environ)
        self.argv = list(sys.argv)
        self.path = list(sys.path)
        self.modules = set(sys.modules)
        self.importer_cache = set(sys.path_importer_cache)
        self.cwd = os.getcwd()
        root = logging.getLogger()
        self.handlers, self.level = list(root.handlers), root.level
        self.converter = logging.Formatter.converter
        self.builtins = {name: getattr(builtins, name, None) for name in ("exit", "quit", "help")}

    def restore(self, bootstrap):
        import builtins
        import logging

        os.environ.clear()
        os.environ.update(self.environ)
        sys.argv[:] = self.argv
        sys.path[:] = self.path
        for name in set(sys.modules) - self.modules:
            if name == REHEARSAL_MODULE or name.startswith(REHEARSAL_MODULE + "."):
                del sys.modules[name]
        for key in set(sys.path_importer_cache) - self.importer_cache:
            del sys.path_importer_cache[key]
        os.chdir(self.cwd)
        root = logging.getLogger()
        for handler in list(root.handlers):
            if handler not in self.handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(self.level)
        logging.Formatter.converter = self.converter
        for name, value in self.builtins.items():
            if value is None:
                if hasattr(builtins, name):
                    delattr(builtins, name)
            else:
                setattr(builtins, name, value)
        bootstrap.ADOPTED_CONNECTION = bootstrap._PREPARED = None
        bootstrap._request_id = bootstrap._tenant_id = None
        time.tzset()


_REHEARSAL_PORT = 9001


def _rehearsal_listener():
    """A listener on 127.0.0.1 in the zygote's own network namespace (loopback brought up)."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(probe.fileno(), 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(probe.fileno(), 0x8914, struct.pack("16sH22x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", _REHEARSAL_PORT))
    listener.listen(1)
    return listener


REHEARSAL_ENVIRONMENT = {
    "_HANDLER": REHEARSAL_MODULE + ".handler", "LAMBDA_TASK_ROOT": "/tmp", "LAMBDA_RUNTIME_DIR": "/var/runtime",
    "AWS_LAMBDA_FUNCTION_NAME": "rehearsal", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_REGION": "us-east-1", "TZ": ":UTC",
}


_ACCEPTED = b'{"status":"OK"}'


def _play_runtime_api(listener, invocations, event, pause=None):
    """The helper, for one connection: the specialisation (the rehearsal environment),
    `invocations` times `event`, each response acknowledged, then hang up (with a `pause`, see
    `_RehearsalStage`, only once told to). Returns how many responses came (fewer: the runtime
    stopped early, and the rehearsal did not warm what it should)."""
    connection, _ = listener.accept()
    # Each answer at once: Nagle would hold an event behind the 202 written just before it until
    # the runtime's delayed ACK (40 ms), and the rehearsal's 64 invocations would take 3 s.
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = connection.makefile("rb")

    def read_request():
        length = 0
        request_line = reader.readline()
        while True:
            line = reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        reader.read(length)
        return request_line

    read_request()  # GET /firebox/specialize
    environment = json.dumps(REHEARSAL_ENVIRONMENT).encode()
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                       % len(environment) + environment)
    answered = 0
    for number in range(invocations):
        if not read_request():  # GET /invocation/next, or the runtime is gone
            break
        deadline = int(time.time() * 1000) + 60000
        connection.sendall((
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            "Lambda-Runtime-Aws-Request-Id: 00000000-0000-4000-8000-%012d\r\n"
            "Lambda-Runtime-Deadline-Ms: %d\r\n"
            "Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:rehearsal\r\n"
            "Lambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0\r\n"
            "Content-Length: %d\r\n\r\n" % (number, deadline, len(event))).encode() + event)
        if b"/response " not in read_request():  # POST .../response
            break
        answered += 1
        connection.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                           % len(_ACCEPTED) + _ACCEPTED)
    else:
        read_request()  # the runtime's next GET, pipelined behind its last response: hang up on it
    if pause is not None:
        os.write(pause[1], b"." if answered == invocations else b"!")
        os.read(pause[2], 1)
    connection.close()
    return answered


# --- a spawn ----------------------------------------------------------------------------------


def sandbox_child(runtime, request, fds, control):
    """The SANDBOX process (pid 1 of its new pid namespace, root until step 3): see the module
    docstring. Never returns."""
    try:
        private = fds.pop(0)
        # A read of the bare fd (one SEQPACKET record), not a socket object: that object's
        # set-up and close run Python code the zygote shares, and each page it touches is
        # copied (measured per sandbox: 64 -> 37 page faults, about 0.1 ms of CPU).
        try:
            message = os.read(private, MAX_MESSAGE)
        finally:
            os.close(private)
        request.update(json.loads(message))
        stdout, stderr, api = isolate(runtime, request, fds)
    except BaseException as exc:  # noqa: BLE001 - reported to the platform, then exit
        control.send(json.dumps({"id": request["id"], "error": "%s: %s" % (type(exc).__name__, exc)}).encode())
        os._exit(1)
    control.send(json.dumps({"id": request["id"], "started": True}).encode())
    control.close()
    run_runtime(runtime, request, stdout, stderr, api)


def isolate(runtime, request, fds):
    """Steps 1 to 4 of a spawn; (stdout, stderr, the runtime's Runtime API socket or None)."""
    netns, code, stdout, stderr = fds[:4]
    api = fds[4] if request.get("runtime_socket") else None
    cgroup_tasks = fds[5:] if api is not None else fds[4:]
    _check(_libc.setns(netns, CLONE_NEWNET), "setns(net)")
    for fd in cgroup_tasks:
        os.write(fd, b"0")
    show_as(request["cmdline"], request["environment"])
    unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # `code` is a detached, read-only copy of the code directory's mount (open_tree, made by the
    # platform in its own mount namespace): attached here, it is this sandbox's alone.
    _check(_libc.syscall(SYS_MOVE_MOUNT, code, b"", AT_FDCWD, b"/var/task", MOVE_MOUNT_F_EMPTY_PATH), "move_mount /var/task")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=%d" % request["tmp_bytes"])
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=%d" % request["shm_bytes"])
    # ptys of its own, as bubblewrap's /dev has (/dev/ptmx links to pts/ptmx)
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # covers the host's
    socket.sethostname(request["hostname"])
    for fd in (netns, code, *cgroup_tasks):
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (request["max_open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (request["max_processes"],) * 2)
    # Woken by its event, a sandbox never preempts the platform's event loop: see
    # firebox/worker/backends/_common.py:yield_to_platform (refused, the default policy stays).
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        pass
    uid = request["uid"]
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # every capability of the host's user namespace is gone here
    prctl(PR_SET_DUMPABLE, 1)  # the uid change cleared it; /proc/self/uid_map needs it
    unshare(CLONE_NEWUSER | CLONE_NEWCGROUP)
    for name, text in ((b"/proc/self/setgroups", b"deny"), (b"/proc/self/uid_map", b"%d %d 1" % (SANDBOX_UID, uid)),
                       (b"/proc/self/gid_map", b"%d %d 1" % (SANDBOX_GID, uid))):
        fd = os.open(name, os.O_WRONLY)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
    runtime.privileges.drop()
    return stdout, stderr, api


def show_as(argv, environment):
    """Make /proc/self/cmdline and /proc/self/environ (and those of the processes forked from
    here) show the sandbox's command and environment instead of the zygote's: both are rewritten
    in place, in the areas the kernel shows, whose rest is NULs (readers see trailing empty
    strings). The platform starts the zygote with room in both (a padding argument and
    variable), because the kernel's way of moving them (PR_SET_MM) needs CAP_SYS_RESOURCE, which
    a host may withhold even from root. The zygote has cleared its own (`clear_areas`), so this
    writes the entries and NULs over what remains of the zygote's, and no more: each page
    written is a page copied."""
    cmdline = [arg.encode() + b"\0" for arg in argv]
    environ = [("%s=%s" % item).encode() + b"\0" for item in environment.items()]
    for (start, end), used, entries in zip(_AREAS, _AREAS_USED, (cmdline, environ)):
        data, room = b"", end - start
        for entry in entries:  # whole entries only
            if len(data) + len(entry) > room:
                break
            data += entry
        ctypes.memmove(start, data, len(data))
        if used > len(data):
            ctypes.memset(start + len(data), 0, used - len(data))


def clear_areas():
    """The zygote's own command line without the room (what `ps` shows of it) and an empty
    environment area, everything else NULs: its variables must have left the area first
    (main). Sets `_AREAS_USED`, how much of each area holds anything."""
    global _AREAS_USED
    own = b"".join(arg.encode() + b"\0" for arg in getattr(sys, "orig_argv", sys.argv) if arg.strip(" "))
    (arg_start, arg_end), (env_start, env_end) = _AREAS
    own = own[:arg_end - arg_start]
    ctypes.memmove(arg_start, own, len(own))
    ctypes.memset(arg_start + len(own), 0, arg_end - arg_start - len(own))
    ctypes.memset(env_start, 0, env_end - env_start)
    _AREAS_USED = (len(own), 0)


class Privileges:
    """What dropping privileges needs, worked out once in the zygote (every child has the same
    kernel and the same address space): the last capability number, the capset arguments, and
    the seccomp program as a `struct sock_fprog` in memory. A child then only makes the system
    calls, writing to as few of the pages it shares with the zygote as it can."""

    def __init__(self, program):
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            self.capabilities = range(int(handle.read()) + 1)
        self.cap_header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
        self.cap_data = bytes(24)  # two (effective, permitted, inheritable) u32 triples, all zero
        self._filters = ctypes.create_string_buffer(program, len(program))
        # struct sock_fprog {unsigned short len; struct sock_filter *filter;}, 16 bytes on x86_64
        self._fprog = ctypes.create_string_buffer(
            struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(self._filters)), 16)
        self.fprog_address = ctypes.addressof(self._fprog)

    def drop(self):
        """Every capability gone for good, no_new_privs, then the seccomp filter. The bounding
        set goes one capability a call (41 here), each a new set of credentials in the kernel:
        the calls are made straight, not through `prctl` (measured in forked children, the 41:
        289-308 -> 213-247 us)."""
        call = _libc.prctl
        for cap in self.capabilities:
            if call(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                _check(-1, "prctl(PR_CAPBSET_DROP, %d)" % cap)
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        _check(_libc.syscall(SYS_CAPSET, self.cap_header, self.cap_data), "capset")
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self.fprog_address)


def _argv_and_environ_areas():
    """(start, end) of this process's argv and environment areas, as /proc/<pid>/stat says."""
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rpartition(b")")[2].split()
    return (int(fields[45]), int(fields[46])), (int(fields[47]), int(fields[48]))


_AREAS = None  # set in the zygote by main(); its children inherit it
_AREAS_USED = None  # set by clear_areas, in the zygote


def run_runtime(runtime, request, stdout, stderr, api=None):
    """The function's runtime (`api`: the fd of its Runtime API socket, if it has one). Never
    returns."""
    status = 1
    try:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        if api is not None:  # close-on-exec: no program the function runs gets it
            if api != RUNTIME_API_FD:
                os.dup2(api, RUNTIME_API_FD, inheritable=False)
                api = RUNTIME_API_FD
            os.set_inheritable(api, False)
        os.closerange(RUNTIME_API_FD + (api is not None), 65536)
        os.setsid()
        os.chdir("/var/task")
        environment = dict(request["environment"], PWD="/var/task")
        if runtime.flavour == "script":
            os.environ.clear()
            os.environ.update(environment)
            importlib.invalidate_caches()
        else:
            # Each step here writes to pages this child shares with the zygote (copying
            # them), so only what has to change does: the variables that differ, the
            # listings of the folders that differ. Measured with _signal below, per sandbox:
            # 40 fewer pages copied (PSS 2.59 -> 2.44 MB in bench/sandboxes.py), and these
            # steps' CPU 0.65 -> 0.36 ms.
            runtime.stem.become(os.environ, environment)
            runtime.bootstrap.forget_changed_listings("/var/task")
        time.tzset()
        # _signal, not signal: the module's wrappers convert to and from enums on every call.
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        _signal.set_wakeup_fd(-1)
        # The zygote's objects stay frozen: collecting them would write to every shared page
        # (copying it) to find no garbage among modules that live as long as the process.
        gc.enable()
        status = runtime.run(request["kind"], request["argv"], api)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            sys.stderr.write("%s\n" % exc.code)
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, status 1
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(status if isinstance(status, int) else 1)


# --- serving ----------------------------------------------------------------------------------


def serve(runtime, control):
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    while True:
        readable, _, _ = select.select([control, wake_read], [], [])
        if wake_read in readable:
            while True:
                try:
                    if not os.read(wake_read, 4096):
                        break
                except BlockingIOError:
                    break
            reap(control)
        if control in readable:
            message, fds = receive(control)
            if message is None:
                kill_children()  # the platform is gone: so are the sandboxes it started
                return 0
            request = {}
            try:
                request = json.loads(message)
                pid = fork_into_new_pid_namespace(own_pid_namespace)
            except Exception as exc:  # noqa: BLE001 - that spawn fails, the zygote goes on
                for fd in fds:
                    os.close(fd)
                control.send(json.dumps({"id": request.get("id"), "error": repr(exc)}).encode())
                continue
            if pid == 0:
                try:
                    signal.set_wakeup_fd(-1)
                    for fd in (wake_read, wake_write, own_pid_namespace):
                        os.close(fd)
                    sandbox_child(runtime, request, fds, control)
                finally:
                    os._exit(1)  # never back into this loop: a child must not serve as a zygote
            # Formatted, not json.dumps of a dict: every page this loop writes between two forks
            # is copied again after each, and the encoder's path for a dict writes many.
            # Measured (bench/sandboxes.py): the zygote's faults per spawn 153-158 -> 130, its
            # CPU per spawn 1.66-1.72 -> 1.50-1.53 ms.
            control.send(b'{"id": %s, "pid": %d}' % (json.dumps(request["id"]).encode(), pid))
            for fd in fds:
                os.close(fd)


def fork_into_new_pid_namespace(own_pid_namespace):
    """`fork_plain()`, the child being pid 1 of a new pid namespace. unshare(CLONE_NEWPID) sets
    the namespace of the caller's next children only; joining its own namespace again afterwards
    (setns) is what lets the zygote do it once per sandbox."""
    unshare(CLONE_NEWPID)
    try:
        return fork_plain()
    finally:
        if os.getpid() != 1:  # the parent (the child is pid 1 of the new namespace)
            _check(_libc.setns(own_pid_namespace, CLONE_NEWPID), "setns(own pid namespace)")


_ONE_THREAD = []  # [whether this process has a single thread], asked once (see fork_plain)


def fork_plain():
    """fork(2) through libc, without os.fork()'s work around it, in the child: that reinitialises
    the interpreter's locks and runs every `os.register_at_fork` hook (threading's, logging's,
    random's...), which copied about 50 pages the child would otherwise never write. Measured
    (bench/sandboxes.py, 3 alternated runs of 200 sandboxes): faults per sandbox 634-637 ->
    585-589, PSS 2.21 -> 2.02 MB, 462-463 -> 506-507 per GB, created 260-274 -> 270-300/s.

    Sound only in a process with one thread, as the zygote is: no lock can then be held by
    another thread at the fork, and the parent's GIL, released around the foreign call, is
    taken back in the child as it was left. Checked once (/proc/self/task); with more threads,
    os.fork(). What a sandbox needs of those hooks is done here: a random stream of its own
    (`random` reseeds, as its hook would: children of one zygote must not share one) and the
    main thread's native id."""
    if not _ONE_THREAD:
        _ONE_THREAD.append(len(os.listdir("/proc/self/task")) == 1)
    if not _ONE_THREAD[0]:
        return os.fork()
    pid = _libc.fork()
    if pid < 0:
        error = ctypes.get_errno()
        raise OSError(error, "fork: %s" % os.strerror(error))
    if pid == 0:
        random = sys.modules.get("random")
        if random is not None:
            random.seed()
        threading = sys.modules.get("threading")
        set_native_id = getattr(threading.main_thread(), "_set_native_id", None) if threading else None
        if set_native_id is not None:
            set_native_id()
    return pid


def kill_children():
    """SIGKILL every child (the sandboxes; /proc is the host's here)."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as stat:
                parent = stat.read().rpartition(b")")[2].split()[1]
        except (OSError, IndexError):
            continue
        if parent.decode() == me:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def reap(control):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.send(json.dumps({"exited": pid, "status": os.waitstatus_to_exitcode(status)}).encode())


def receive(control):
    fds = []
    try:
        message, ancillary, _, _ = control.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
    except ConnectionResetError:
        return None, []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack("%di" % (len(data) // 4), data[: len(data) - len(data) % 4]))
    if not message:
        for fd in fds:
            os.close(fd)
        return None, []
    return message, fds


def main():
    control = socket.socket(fileno=int(sys.argv[1]))
    try:
        config = json.loads(control.recv(MAX_MESSAGE))
        build_root(config)
        global _AREAS
        _AREAS = _argv_and_environ_areas()
        # Every child overwrites the environment area (`show_as`), where libc's strings of this
        # process's variables start out: each variable set once more gets its own copy, so a
        # child's libc environment stays right for the variables it does not change (the
        # rehearsal's clean-up did it too, but only by the way). Then both areas are cleared,
        # so that a child writes only its own entries there.
        os.environ.pop(_ROOM_VARIABLE, None)
        for name, value in list(os.environ.items()):
            os.environ[name] = value
        clear_areas()
        runtime = Runtime(config["flavour"], base64.b64decode(config["seccomp"]))
        rehearsed = rehearse(runtime) if config.get("rehearse", True) else None
        if runtime.flavour != "script":
            # What every child's runtime would set up first (stdio, sys.path, logging...):
            # done once here, with this zygote's start-up environment, its children's own.
            runtime.bootstrap.prepare_init()
            runtime.bootstrap.plan_changed_listings("/var/task")  # imports nothing after this
    except BaseException as exc:  # noqa: BLE001 - the platform reads it and gives up on this zygote
        control.send(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}).encode())
        return 1
    gc.collect()
    gc.freeze()
    gc.disable()  # nothing allocates here in cycles; children re-enable
    try:
        working_set = learn_working_set(runtime)
        runtime.working_set = page_runs(working_set)
    except Exception as exc:  # noqa: BLE001 - an optimisation: without it, cells fault later
        working_set = frozenset()
        sys.stderr.write("zygote: learning the stem cells' working set failed: %r\n" % (exc,))
    try:
        fill_pool_holes()
    except Exception as exc:  # noqa: BLE001 - an optimisation: without it, children copy a few more pages
        sys.stderr.write("zygote: filling the allocator's free blocks failed: %r\n" % (exc,))
    control.send(json.dumps({"ready": os.getpid(), "working_set_pages": len(working_set),
                             "rehearsed": rehearsed}).encode())
    return serve(runtime, control)


if __name__ == "__main__":
    sys.exit(main())
