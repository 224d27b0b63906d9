"""Safety checks for Lambda code packages (zip files), at upload and at extraction.

`inspect_zip` runs when the control plane accepts a package, `safe_extract` when a worker's code
cache unpacks one; both apply the same checks. A rejection is `InvalidParameterValue` in AWS's
words, "Could not unzip..." followed by a short reason in parentheses where one helps.

The checks, in order: (1) the zip's size (`inspect_zip` only); (2) the number of entries, counted
in the central directory *before* `zipfile` builds an object per entry (50 MB of empty entries
would be ~700,000 objects); (3) per entry: a name that is not absolute and has no `..` component
(splitting on `/` and `\\`) nor NUL, no encryption, stored or deflated data, and no path that is
two of file, directory and symlink; (4) the declared uncompressed sizes; (5) the real ones: each
entry is decompressed in 64 KiB chunks under a running total that stops at the limit, and must
yield exactly its declared size and CRC; (6) every symlink (unix mode S_IFLNK) resolves inside
the package, through the package's other symlinks as the kernel would (`s -> .`, `t -> s/..`).

Why only stored and deflated: `zipfile` bounds the output of each deflate read, but decompresses
bzip2 and lzma reads without bound: a few KiB of bzip2 can become gigabytes in memory before any
counter sees them. zip(1) and the AWS tools write deflate.

Known caveats
-------------
- `safe_extract` does not fsync what it writes: after a power cut the code cache should be
  wiped and rebuilt from the blob store.
- `safe_extract` renames the finished tree onto `dest`; if an empty directory appeared at
  `dest` meanwhile, Linux's rename replaces it silently.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from firebox.errors import InvalidParameterValue

UNZIP_FAILED = "Could not unzip uploaded file. Please check your file, then try to upload again."
_CHUNK = 64 * 1024
_MAX_LINK_TARGET = 4096  # PATH_MAX
_MAX_LINK_HOPS = 40  # Linux's own limit on symlinks followed in one lookup
_SUPPORTED_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# What zipfile (and zlib) raise on a hostile or damaged archive.
_CORRUPT = (zipfile.BadZipFile, EOFError, OSError, ValueError, IndexError, NotImplementedError,
            RuntimeError, struct.error, zlib.error)
_ABSOLUTE = re.compile(r"^(?:[/\\]|[A-Za-z]:)")


@dataclass(frozen=True)
class PackageInfo:
    sha256_b64: str  # AWS's CodeSha256: base64 of the SHA-256 digest of the zip bytes
    sha256_hex: str  # the blob store's name for the same digest
    size: int  # bytes of the zip
    unzipped_size: int  # bytes of all entries, decompressed
    entries: int


def inspect_zip(
    data: bytes, *, max_zip_bytes: int, max_unzipped_bytes: int, max_entries: int
) -> PackageInfo:
    """Check an uploaded package without writing anything; raise InvalidParameterValue if bad."""
    if len(data) > max_zip_bytes:
        raise InvalidParameterValue(f"Zipped size must be smaller than {max_zip_bytes} bytes")
    digest = hashlib.sha256(data).digest()
    unzipped, entries = _walk(data, max_unzipped_bytes, max_entries, None)
    return PackageInfo(b64encode(digest).decode(), digest.hex(), len(data), unzipped, entries)


def safe_extract(zip_path: Path, dest: Path, *, max_unzipped_bytes: int, max_entries: int) -> int:
    """Extract the package at `zip_path` into `dest` (which must not exist) and return its unzipped
    size as `inspect_zip` counts it. The tree is built in a sibling temporary directory, renamed
    onto `dest` once complete. Files are 0o755 when the zip's unix mode has any execute bit, else
    0o644; directories 0o755. Raises FileExistsError (`dest` exists), InvalidParameterValue (a bad
    package) or OSError (the host's own failures)."""
    dest = Path(dest)
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, "the extraction target exists already", str(dest))
    data = Path(zip_path).read_bytes()  # bounded by the upload limit; one code path with inspect
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)
        unzipped, _ = _walk(data, max_unzipped_bytes, max_entries, tmp)
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "the extraction target exists already", str(dest))
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return unzipped


class _Entry(NamedTuple):
    info: zipfile.ZipInfo
    parts: tuple[str, ...]  # the normalised path inside the package
    kind: str  # "file", "dir" or "link"


def _unzip_error(reason: str | None = None) -> InvalidParameterValue:
    return InvalidParameterValue(UNZIP_FAILED + (f" ({reason})" if reason else ""))


def _walk(data: bytes, limit: int, max_entries: int, root: Path | None) -> tuple[int, int]:
    """Check (and, given a `root`, extract) every entry; return (unzipped bytes, entries)."""
    too_many = _unzip_error(f"the package has more than {max_entries} entries")
    if _count_entries(data, max_entries) > max_entries:
        raise too_many
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _CORRUPT as exc:
        raise _unzip_error() from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > max_entries:
            raise too_many
        entries = _plan(infos)
        if _declared_size(infos) > limit:
            raise InvalidParameterValue(f"Unzipped size must be smaller than {limit} bytes")
        total, links, made = 0, dict[str, str](), set[tuple[str, ...]]()
        for entry in entries:
            chunks = _stream(archive, entry, limit - total, limit)
            if root is not None:
                _make_dirs(root, entry.parts if entry.kind == "dir" else entry.parts[:-1], made)
            if entry.kind == "file" and root is not None:
                total += _write_file(root, entry, chunks)
            elif entry.kind == "link":
                target = _read_link(entry, chunks)
                total += len(target)
                links["/".join(entry.parts)] = target.decode("utf-8", "surrogateescape")
            else:
                total += sum(len(chunk) for chunk in chunks)
    for name, target in links.items():
        if not target or "\0" in target or _link_escapes(name, target, links):
            raise _unzip_error(f"symlink {name!r} does not resolve inside the package")
    if root is not None:
        _make_links(root, links)
    return total, len(infos)


def _count_entries(data: bytes, limit: int) -> int:
    """Central directory headers, located as `zipfile` does (end record, then zip64's) and counted
    without parsing them, up to `limit` + 1. An odd layout is left to `zipfile`'s own parse."""
    end = len(data) - 22  # negative for a tiny input: the slice is empty, rfind then decides
    if data[end : end + 4] != b"PK\x05\x06":
        end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65557))
        if end < 0 or end + 22 > len(data):
            return 0
    cd_size = struct.unpack_from("<I", data, end + 12)[0]
    if end >= 20 and data[end - 20 : end - 16] == b"PK\x06\x07":
        end -= 20 + 56  # the zip64 end record sits right before its locator
        if end < 0 or data[end : end + 4] != b"PK\x06\x06":
            return 0
        cd_size = struct.unpack_from("<Q", data, end + 40)[0]
    pos, count = end - cd_size, 0
    while 0 <= pos and pos + 46 <= end and data[pos : pos + 4] == b"PK\x01\x02" and count <= limit:
        count += 1
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        pos += 46 + name_len + extra_len + comment_len
    return count


def _plan(infos: list[zipfile.ZipInfo]) -> list[_Entry]:
    """Check every entry's metadata; refuse a path that would be two kinds of thing at once."""
    entries: list[_Entry] = []
    kinds: dict[str, str] = {}
    for info in infos:
        name = info.orig_filename  # zipfile cuts `filename` at a NUL; this one keeps it
        if reason := _name_problem(name):
            raise _unzip_error(f"entry {name!r} {reason}")
        if info.flag_bits & 0x1:
            raise _unzip_error(f"entry {name!r} is encrypted")
        if info.compress_type not in _SUPPORTED_METHODS:
            raise _unzip_error(f"entry {name!r} is neither stored nor deflated")
        if stat.S_ISLNK(info.external_attr >> 16):
            kind = "link"
        else:
            kind = "dir" if info.is_dir() else "file"
        parts = tuple(part for part in info.filename.split("/") if part not in ("", "."))
        if not parts and kind != "dir":
            raise _unzip_error(f"entry {name!r} has no name")
        claims = [("/".join(parts[:i]), "dir") for i in range(1, len(parts))]
        for path, claim in claims + ([("/".join(parts), kind)] if parts else []):
            if (seen := kinds.setdefault(path, claim)) != claim:
                raise _unzip_error(f"entry {name!r} makes {path!r} both a {seen} and a {claim}")
        entries.append(_Entry(info, parts, kind))
    return entries


def _declared_size(infos: list[zipfile.ZipInfo]) -> int:
    return sum(info.file_size for info in infos)  # cheap, but only what the headers claim


def _name_problem(name: str) -> str | None:
    if "\0" in name:
        return "contains a NUL byte"
    if _ABSOLUTE.match(name):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "escapes the package root"
    return None


def _stream(archive: zipfile.ZipFile, entry: _Entry, budget: int, limit: int) -> Iterator[bytes]:
    """The entry's bytes in chunks: never more than `budget` in all, never a lying size or CRC."""
    info, produced = entry.info, 0
    try:
        with archive.open(info) as member:
            # zipfile bounds each deflate read by the size asked for, so memory stays at a chunk.
            while chunk := member.read(_CHUNK):
                produced += len(chunk)
                if produced > budget:
                    raise InvalidParameterValue(f"Unzipped size must be smaller than {limit} bytes")
                yield chunk
    except _CORRUPT as exc:  # a CRC mismatch is a BadZipFile
        raise _unzip_error() from exc
    if produced != info.file_size:
        raise _unzip_error(f"entry {info.orig_filename!r} is not the size its header declares")


def _read_link(entry: _Entry, chunks: Iterator[bytes]) -> bytes:
    target = b""  # a path: at most PATH_MAX bytes, so holding it whole is fine
    for chunk in chunks:
        target += chunk
        if len(target) > _MAX_LINK_TARGET:
            raise _unzip_error(f"symlink {entry.info.orig_filename!r} has too long a target")
    return target


def _link_escapes(name: str, target: str, links: dict[str, str]) -> bool:
    """Whether following symlink `name` leaves the package root (or loops), resolving through the
    package's other symlinks component by component, as the kernel would."""
    if target.startswith("/"):
        return True
    # `where`: the directories reached so far, never symlinks themselves.
    where, todo, hops = name.split("/")[:-1], list(reversed(target.split("/"))), 0
    while todo:
        if (part := todo.pop()) in ("", "."):
            continue
        if part == "..":
            if not where:
                return True
            where.pop()
        elif (path := "/".join([*where, part])) in links:
            hops += 1
            nested = links[path]
            if hops > _MAX_LINK_HOPS or nested.startswith("/"):
                return True
            todo.extend(reversed(nested.split("/")))  # relative to the directory `where`
        else:
            where.append(part)
    return False


def _make_dirs(root: Path, parts: tuple[str, ...], made: set[tuple[str, ...]]) -> None:
    # No symlink exists yet while entries are written (they come last), so none is traversed.
    for depth in range(1, len(parts) + 1):
        if (prefix := parts[:depth]) in made:
            continue
        path = root.joinpath(*prefix)
        try:
            os.mkdir(path)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise
        os.chmod(path, 0o755)  # whatever the umask
        made.add(prefix)


def _write_file(root: Path, entry: _Entry, chunks: Iterator[bytes]) -> int:
    mode = 0o755 if (entry.info.external_attr >> 16) & 0o111 else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    written = 0
    with open(os.open(root.joinpath(*entry.parts), flags, mode), "wb") as out:
        os.fchmod(out.fileno(), mode)  # whatever the umask, and for a duplicate name too
        for chunk in chunks:
            out.write(chunk)
            written += len(chunk)
    return written


def _make_links(root: Path, links: dict[str, str]) -> None:
    for name, target in links.items():
        os.symlink(target, root.joinpath(*name.split("/")))
    # Belt and braces: ask the kernel where each one leads now that the tree is complete.
    real_root = os.path.realpath(root)
    for name in links:
        real = os.path.realpath(root.joinpath(*name.split("/")))
        if os.path.commonpath([real, real_root]) != real_root:
            raise _unzip_error(f"symlink {name!r} does not resolve inside the package")
