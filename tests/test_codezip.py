"""codezip: the checks on uploaded packages and the safe extraction of the code cache."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from firebox import codezip
from firebox.codezip import UNZIP_FAILED, PackageInfo, inspect_zip, safe_extract
from firebox.errors import InvalidParameterValue

MB = 1024 * 1024
LIMITS = dict(max_zip_bytes=50 * MB, max_unzipped_bytes=250 * MB, max_entries=100)
EXTRACT_LIMITS = dict(max_unzipped_bytes=250 * MB, max_entries=100)


Entry = tuple[str | zipfile.ZipInfo, bytes]


def build(*entries: Entry, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in entries:
            archive.writestr(name, content)
    return buffer.getvalue()


def unix(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    return unix(name, stat.S_IFLNK | 0o777), target.encode()


IN_ROOT_LINKS = [
    ("v1/x.py", b"1"), symlink("current", "v1"), symlink("lib/y.py", "../current/x.py")
]


def zeros_zip(size: int) -> bytes:
    """`size` bytes of zeros, deflated and streamed: the zip stays tiny, memory too."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("zeros", "w", force_zip64=True) as member:
            chunk = bytes(MB)
            for _ in range(size // MB):
                member.write(chunk)
    return buffer.getvalue()


def rejected(data: bytes, **limits: int) -> str:
    with pytest.raises(InvalidParameterValue) as caught:
        inspect_zip(data, **{**LIMITS, **limits})
    assert caught.value.code == "InvalidParameterValueException"
    return caught.value.message


def test_valid_zip() -> None:
    data = build(("lambda_function.py", b"def handler(e, c):\n    return 1\n"), ("lib/", b""),
                 ("lib/x.py", b"X = 1\n"))
    info = inspect_zip(data, **LIMITS)
    digest = hashlib.sha256(data).digest()
    assert info == PackageInfo(
        sha256_b64=base64.b64encode(digest).decode(),
        sha256_hex=digest.hex(),
        size=len(data),
        unzipped_size=len(b"def handler(e, c):\n    return 1\n") + len(b"X = 1\n"),
        entries=3,
    )


def test_stored_zip_and_duplicate_names_are_fine() -> None:
    with pytest.warns(UserWarning):  # zipfile's own "Duplicate name" warning when building
        data = build(("a.py", b"1"), ("a.py", b"22"), method=zipfile.ZIP_STORED)
    assert inspect_zip(data, **LIMITS).unzipped_size == 3


@pytest.mark.parametrize("data", [b"", b"not a zip at all", b"PK\x03\x04" + bytes(100)])
def test_not_a_zip(data: bytes) -> None:
    assert rejected(data) == UNZIP_FAILED


def test_truncated_zip() -> None:
    data = build(("a.py", os.urandom(10_000)))
    assert rejected(data[: len(data) // 2]).startswith(UNZIP_FAILED)


def test_zipped_size_limit() -> None:
    data = build(("a.py", os.urandom(5000)))
    assert rejected(data, max_zip_bytes=len(data) - 1) == (
        f"Zipped size must be smaller than {len(data) - 1} bytes"
    )
    assert inspect_zip(data, **{**LIMITS, "max_zip_bytes": len(data)}).size == len(data)


def test_aws_wording_with_real_limits() -> None:
    big = b"\0" * (50 * MB + 1)  # not a zip: the size is checked first
    message = rejected(big, max_zip_bytes=52428800)
    assert message == "Zipped size must be smaller than 52428800 bytes"
    data = _set_declared_size(build(("big", b"x")), 262144001)  # caught before decompressing
    assert rejected(data, max_unzipped_bytes=262144000) == (
        "Unzipped size must be smaller than 262144000 bytes"
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil", "escapes the package root"),
        ("a/../../evil", "escapes the package root"),
        ("a/../b", "escapes the package root"),
        ("..\\evil", "escapes the package root"),
        ("a\\..\\..\\evil", "escapes the package root"),
        ("/etc/x", "is an absolute path"),
        ("\\etc\\x", "is an absolute path"),
        ("C:/Windows/x", "is an absolute path"),
        ("a\0b", "contains a NUL byte"),
    ],
)
def test_unsafe_names(name: str, reason: str) -> None:
    # zipfile cuts names at a NUL when writing, so that one is patched in afterwards.
    data = build((name.replace("\0", "X"), b"x")).replace(b"aXb", b"a\0b")
    message = rejected(data)
    assert message == f"{UNZIP_FAILED} (entry {name!r} {reason})"


def test_traversal_message_matches_the_documented_shape() -> None:
    assert rejected(build(("../x", b""))) == (
        "Could not unzip uploaded file. Please check your file, then try to upload again."
        " (entry '../x' escapes the package root)"
    )


def test_symlink_outside_the_root() -> None:
    for target in ["/etc/shadow", "../../etc/shadow", "a/../../x"]:
        message = rejected(build(symlink("link", target)))
        assert message == f"{UNZIP_FAILED} (symlink 'link' does not resolve inside the package)"


def test_symlink_chain_that_escapes() -> None:
    # Each target alone stays inside; together `t` is the package's parent directory.
    data = build(symlink("s", "."), symlink("t", "s/.."))
    assert "symlink 't'" in rejected(data)
    loop = build(symlink("a", "b"), symlink("b", "a"))
    assert rejected(loop).startswith(UNZIP_FAILED)


def test_symlinks_inside_the_root_are_fine() -> None:
    data = build(*IN_ROOT_LINKS)
    assert inspect_zip(data, **LIMITS).entries == 3


def test_path_both_file_and_directory() -> None:
    assert "both a file and a dir" in rejected(build(("a", b"1"), ("a/b", b"2")))
    assert "both a link and a dir" in rejected(build(symlink("a", "x"), ("a/b", b"2")))


def test_zip_bomb() -> None:
    data = zeros_zip(20 * MB)
    assert len(data) < 100_000
    assert rejected(data, max_unzipped_bytes=10 * MB) == (
        f"Unzipped size must be smaller than {10 * MB} bytes"
    )


def test_streaming_counter_stops_a_bomb_without_the_declared_sizes(monkeypatch) -> None:
    # Defence in depth: with the declared-size check blinded, decompression stops at the limit.
    monkeypatch.setattr(codezip, "_declared_size", lambda infos: 0)
    reads: list[int] = []
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        chunk = real_read(self, n)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    message = rejected(zeros_zip(20 * MB), max_unzipped_bytes=10 * MB)
    assert message == f"Unzipped size must be smaller than {10 * MB} bytes"
    assert max(reads) <= 64 * 1024  # never a whole member in memory
    assert sum(reads) <= 10 * MB + 64 * 1024  # stopped as soon as the limit was passed


def _set_declared_size(data: bytes, size: int) -> bytes:
    """Rewrite the uncompressed size in the (single) central directory header."""
    buffer = bytearray(data)
    end = buffer.rfind(b"PK\x05\x06")
    directory = struct.unpack_from("<I", buffer, end + 16)[0]
    assert buffer[directory : directory + 4] == b"PK\x01\x02"
    struct.pack_into("<I", buffer, directory + 24, size)
    return bytes(buffer)


def test_declared_size_that_lies_low() -> None:
    honest = build(("zeros", bytes(2 * MB)))
    lying = _set_declared_size(honest, 1000)
    assert inspect_zip(honest, **LIMITS).unzipped_size == 2 * MB
    # zipfile stops at the declared size, so the CRC no longer matches
    assert rejected(lying, max_unzipped_bytes=MB) == UNZIP_FAILED


def test_declared_size_that_lies_high() -> None:
    lying = _set_declared_size(build(("a.py", b"x" * 1000)), 5000)
    assert rejected(lying) == f"{UNZIP_FAILED} (entry 'a.py' is not the size its header declares)"


def test_crc_error() -> None:
    data = bytearray(build(("a.py", b"hello world" * 10), method=zipfile.ZIP_STORED))
    position = data.find(b"hello world")
    data[position] ^= 0xFF
    assert rejected(bytes(data)) == UNZIP_FAILED


def test_too_many_entries() -> None:
    data = build(*((f"f{i}.py", b"") for i in range(5)))
    assert rejected(data, max_entries=4) == f"{UNZIP_FAILED} (the package has more than 4 entries)"
    assert inspect_zip(data, **{**LIMITS, "max_entries": 5}).entries == 5


def test_entry_count_is_checked_before_zipfile_parses_the_directory(monkeypatch) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(66_000):  # past 65,535: the zip64 end record holds the count
            archive.writestr(f"{i}", b"")
    data = buffer.getvalue()
    assert data.find(b"PK\x06\x06") > 0

    def no_parse(*args, **kwargs):
        raise AssertionError("zipfile should not have parsed this directory")

    monkeypatch.setattr(zipfile, "ZipFile", no_parse)
    message = rejected(data, max_entries=20_000)
    assert message == f"{UNZIP_FAILED} (the package has more than 20000 entries)"


def test_encrypted_entry() -> None:
    data = bytearray(build(("secret.py", b"x")))
    # Set bit 0 (encrypted) of the general-purpose flags, in the local and central headers.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = data.find(signature) + offset
        struct.pack_into("<H", data, position, struct.unpack_from("<H", data, position)[0] | 1)
    assert rejected(bytes(data)) == f"{UNZIP_FAILED} (entry 'secret.py' is encrypted)"


def test_bzip2_is_refused() -> None:
    data = build(("a.py", b"x" * 100), method=zipfile.ZIP_BZIP2)
    assert rejected(data) == f"{UNZIP_FAILED} (entry 'a.py' is neither stored nor deflated)"


# safe_extract


def write_zip(tmp_path: Path, *entries: Entry) -> Path:
    path = tmp_path / "package.zip"
    path.write_bytes(build(*entries))
    return path


def test_extract_preserves_the_executable_bit(tmp_path: Path) -> None:
    package = write_zip(
        tmp_path,
        (unix("bootstrap", stat.S_IFREG | 0o755), b"#!/bin/sh\n"),
        (unix("only-owner-x", stat.S_IFREG | 0o700), b"x"),
        (unix("private.txt", stat.S_IFREG | 0o600), b"p"),
        ("lib/deep/mod.py", b"M = 1\n"),  # no unix mode at all
        ("empty/", b""),
    )
    dest = tmp_path / "code"
    written = safe_extract(package, dest, **EXTRACT_LIMITS)
    assert written == len(b"#!/bin/sh\n") + 1 + 1 + len(b"M = 1\n")
    assert written == inspect_zip(package.read_bytes(), **LIMITS).unzipped_size

    def mode(name: str) -> int:
        return stat.S_IMODE((dest / name).stat().st_mode)

    assert (dest / "bootstrap").read_bytes() == b"#!/bin/sh\n"
    assert (dest / "lib/deep/mod.py").read_bytes() == b"M = 1\n"
    assert mode("bootstrap") == 0o755
    assert mode("only-owner-x") == 0o755
    assert mode("private.txt") == 0o644
    assert mode("lib/deep/mod.py") == 0o644
    assert mode("lib") == mode("lib/deep") == mode("empty") == mode(".") == 0o755
    assert sorted(os.listdir(tmp_path)) == ["code", "package.zip"]  # no temporary left


def test_extract_duplicate_names_last_wins(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        package = write_zip(tmp_path, ("a.py", b"first"), ("a.py", b"second"))
    safe_extract(package, tmp_path / "code", **EXTRACT_LIMITS)
    assert (tmp_path / "code/a.py").read_bytes() == b"second"


def test_extract_creates_symlinks_inside_the_root(tmp_path: Path) -> None:
    package = write_zip(tmp_path, *IN_ROOT_LINKS)
    dest = tmp_path / "code"
    safe_extract(package, dest, **EXTRACT_LIMITS)
    assert os.readlink(dest / "current") == "v1"
    assert (dest / "lib/y.py").read_bytes() == b"1"


@pytest.mark.parametrize(
    "entries",
    [
        [("../evil", b"x")],
        [("/etc/x", b"x")],
        [symlink("shadow", "/etc/shadow")],
        [symlink("s", "."), symlink("t", "s/..")],
        [("ok.py", b"1"), symlink("up", "..")],
    ],
)
def test_extract_rejects_unsafe_packages_and_leaves_nothing(tmp_path: Path, entries) -> None:
    package = write_zip(tmp_path, *entries)
    with pytest.raises(InvalidParameterValue) as caught:
        safe_extract(package, tmp_path / "code", **EXTRACT_LIMITS)
    assert caught.value.message.startswith(UNZIP_FAILED)
    assert sorted(os.listdir(tmp_path)) == ["package.zip"]
    assert not (tmp_path.parent / "evil").exists()


def test_extract_zip_bomb(tmp_path: Path) -> None:
    package = tmp_path / "bomb.zip"
    package.write_bytes(zeros_zip(20 * MB))
    with pytest.raises(InvalidParameterValue, match="Unzipped size"):
        safe_extract(package, tmp_path / "code", max_unzipped_bytes=10 * MB, max_entries=10)
    assert sorted(os.listdir(tmp_path)) == ["bomb.zip"]


def test_extract_too_many_entries(tmp_path: Path) -> None:
    package = write_zip(tmp_path, *((f"f{i}", b"") for i in range(3)))
    with pytest.raises(InvalidParameterValue, match="more than 2 entries"):
        safe_extract(package, tmp_path / "code", max_unzipped_bytes=MB, max_entries=2)


def test_extract_refuses_an_existing_destination(tmp_path: Path) -> None:
    package = write_zip(tmp_path, ("a.py", b"1"))
    dest = tmp_path / "code"
    dest.mkdir()
    with pytest.raises(FileExistsError):
        safe_extract(package, dest, **EXTRACT_LIMITS)
    assert os.listdir(dest) == []
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        safe_extract(package, tmp_path / "link", **EXTRACT_LIMITS)


def test_extract_checks_symlinks_with_the_kernel_too(tmp_path: Path, monkeypatch) -> None:
    # Belt and braces: with the package-level resolver blinded, realpath() still catches the chain.
    monkeypatch.setattr(codezip, "_link_escapes", lambda name, target, links: False)
    package = write_zip(tmp_path, symlink("s", "."), symlink("t", "s/.."))
    with pytest.raises(InvalidParameterValue, match="symlink 't'"):
        safe_extract(package, tmp_path / "code", **EXTRACT_LIMITS)
    assert sorted(os.listdir(tmp_path)) == ["package.zip"]
