"""The sandbox's seccomp filter: a deny-list built with libseccomp (through ctypes), handed to
bubblewrap as a compiled BPF program (`bwrap --seccomp FD`).

Policy
------
Default action ALLOW; each syscall of `DENIED` returns EPERM, the errno a program expects when
it lacks a privilege (so well-written code degrades instead of crashing). The list covers what an
unprivileged process has no business doing in a Lambda sandbox even though namespaces and the
dropped capabilities already refuse most of it: mounting and namespace games (`mount`, the new
mount API, `unshare`, `setns`, `pivot_root`, `chroot`), kernel and host state (modules, kexec,
reboot, swap, clocks, `syslog`, `acct`, quotas, I/O ports), cross-process inspection (`ptrace`,
`process_vm_*`, `kcmp`), the kernel keyring, and attack-surface-heavy interfaces (`bpf`,
`perf_event_open`, `userfaultfd`, `io_uring_*`, `open_by_handle_at`). `personality` stays allowed
(some runtimes call it harmlessly). `io_uring_*` is our addition to the brief's list: container
runtimes' default profiles block it too, and Lambda does not offer it.

Architectures: a context made by `seccomp_init` accepts only the native architecture (x86_64
here, which libseccomp compiles to also refuse the x32 ABI); a syscall made through another ABI
(`int 0x80` i386 calls on x86_64) hits the filter's "bad architecture" action, which kills the
process. So the deny-list cannot be bypassed through a compat ABI.

The program is compiled ONCE per process (`compiled_filter`), exported with
`seccomp_export_bpf` into a memfd and cached as bytes; each sandbox gets its own memfd with those
bytes (`filter_fd`), because bubblewrap reads the program from the fd.

If libseccomp cannot be loaded, `SeccompUnavailable` is raised: the isolated backend must never
silently run without its filter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading

SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO_BASE = 0x00050000
_NR_SCMP_ERROR = -1


def scmp_act_errno(err: int) -> int:
    return _SCMP_ACT_ERRNO_BASE | (err & 0x0000FFFF)


DENIED: tuple[str, ...] = (
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "setns", "unshare",
    "move_mount", "open_tree", "fsopen", "fsmount", "fspick", "mount_setattr",
    # the host: swap, power, kernel code, clocks, logs, accounting, quotas, I/O ports
    "swapon", "swapoff", "reboot", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "syslog", "acct", "quotactl", "iopl", "ioperm", "vhangup", "nfsservctl", "uselib",
    "lookup_dcookie", "fanotify_init",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    # keyring
    "keyctl", "add_key", "request_key",
    # large attack surface
    "bpf", "perf_event_open", "userfaultfd", "open_by_handle_at", "name_to_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)


class SeccompUnavailable(RuntimeError):
    """libseccomp is missing or refused to build the filter."""


_LIB_CANDIDATES = ("libseccomp.so.2", "/usr/lib/x86_64-linux-gnu/libseccomp.so.2")
_lock = threading.Lock()
_compiled: dict[bool, bytes] = {}


def _load() -> ctypes.CDLL:
    names = [ctypes.util.find_library("seccomp"), *_LIB_CANDIDATES]
    problems = []
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            problems.append(str(exc))
            continue
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
        lib.seccomp_rule_add.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                ctypes.POINTER(_ArgCmp)]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_export_bpf.restype = ctypes.c_int
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_attr_set.restype = ctypes.c_int
        return lib
    raise SeccompUnavailable(
        "libseccomp (libseccomp.so.2, Debian package libseccomp2) cannot be loaded; the isolated "
        "sandbox backend refuses to run without its seccomp filter" + (f": {problems[-1]}" if problems else "")
    )


class _ArgCmp(ctypes.Structure):
    """libseccomp's `struct scmp_arg_cmp`."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_SCMP_CMP_MASKED_EQ = 7
_SCMP_FLTATR_CTL_OPTIMIZE = 8  # enum scmp_filter_attr; value 2: a binary tree (libseccomp >= 2.5)
CLONE_NEWUSER = 0x10000000


def compile_filter(denied: tuple[str, ...] = DENIED, *, deny_new_userns: bool = False) -> bytes:
    """Build the deny-list filter and return it as a raw BPF program (struct sock_filter[]).

    `deny_new_userns`: also refuse `clone` with CLONE_NEWUSER (EPERM) and `clone3` altogether
    (ENOSYS, whose flags sit in memory a filter cannot read; glibc then falls back to `clone`).
    `unshare` is refused anyway. For sandboxes that bubblewrap's `--disable-userns` does not
    cover (the zygote backend's)."""
    lib = _load()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        # A binary tree of the syscall numbers instead of one comparison after another: the
        # kernel runs the program for every syscall number when it loads it (to learn which
        # it can allow without running it again), so the load costs in proportion to the
        # comparisons a syscall walks. Measured, a forked child's prctl(PR_SET_SECCOMP): 187-203
        # -> 125 us (79 instructions instead of 66). A libseccomp older than 2.5 refuses the
        # attribute: the linear program it builds then is as correct.
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, 2)
        deny = scmp_act_errno(errno.EPERM)
        for name in denied:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == _NR_SCMP_ERROR:
                continue  # unknown to this libseccomp: nothing to deny
            rc = lib.seccomp_rule_add(ctx, deny, number, 0)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_rule_add({name}) failed: {os.strerror(-rc)}")
        if deny_new_userns:
            newuser = _ArgCmp(0, _SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
            rc = lib.seccomp_rule_add_array(ctx, deny, lib.seccomp_syscall_resolve_name(b"clone"), 1,
                                            ctypes.byref(newuser))
            clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
            if rc >= 0 and clone3 != _NR_SCMP_ERROR:
                rc = lib.seccomp_rule_add(ctx, scmp_act_errno(errno.ENOSYS), clone3, 0)
            if rc < 0:
                raise SeccompUnavailable(f"the user-namespace rules failed: {os.strerror(-rc)}")
        fd = os.memfd_create("firebox-seccomp-export", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    program = b"".join(chunks)
    if not program or len(program) % 8:
        raise SeccompUnavailable(f"seccomp_export_bpf produced {len(program)} bytes, not a BPF program")
    return program


def compiled_filter(*, deny_new_userns: bool = False) -> bytes:
    """The process-wide filter, compiled on first use and cached."""
    with _lock:
        if deny_new_userns not in _compiled:
            _compiled[deny_new_userns] = compile_filter(deny_new_userns=deny_new_userns)
        return _compiled[deny_new_userns]


def filter_fd() -> int:
    """A new memfd holding the filter, positioned at 0, close-on-exec (pass it with `pass_fds`;
    the caller closes it after the sandbox started)."""
    program = compiled_filter()
    fd = os.memfd_create("firebox-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
