"""Durable state behind two small interfaces: a metadata store and a blob store.

Contract
--------
`MetadataStore` keeps JSON documents addressed by (kind, scope, key):
  - `kind` names a record type ("function", "version", "alias", "tags", ...);
  - `scope` groups records that are listed together (an account id, a function name);
  - `key` orders records inside a scope (scans return keys in ascending byte order, so callers
    zero-pad numbers they want ordered numerically).

A document is a JSON object: a dict of JSON values (no NaN or infinities; tuples come back as
lists). What `get` and `scan` return is a fresh copy the caller may mutate.

Every read or write happens inside a unit of work passed to `atomically` (read-write) or `read`
(read-only). The unit of work is a plain *synchronous* function of a `Tx`: it must not await,
sleep or do I/O other than through the `Tx`, and it may be retried by an implementation that
needs to (PostgreSQL serialization failures), so it must not have side effects outside the Tx.
Either all of its writes land or none do; an exception raised inside it rolls everything back and
propagates unchanged. Units of work are serializable with respect to each other; a `read` unit
sees one consistent snapshot. Cancelling the task that awaits a unit does not undo it: the unit
may still commit. Implementations are opened by `wiring.py` (an `open()` that is not part of
this Protocol, since only the composition root calls it) and closed with `close()`.

Why synchronous units inside an async interface: the embedded SQLite store runs them on one
dedicated thread, which makes every control-plane change atomic without async locks, and a
PostgreSQL store can run the same function inside a transaction on a connection-pool thread.

`BlobStore` keeps immutable byte strings addressed by the hex SHA-256 of their content (code
packages). `put` is idempotent: storing the same bytes twice stores them once. A blob is visible
to `get`/`local_path` only after it is completely and durably written (write to a temporary
file, fsync, rename), so a crash never leaves a truncated blob under a valid name. Every
`sha256_hex` argument must be 64 lowercase hex digits (ValueError otherwise): it becomes a path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Document = dict[str, Any]


class Tx(Protocol):
    """One atomic unit of work's view of the metadata store. Synchronous by design."""

    def get(self, kind: str, scope: str, key: str) -> Document | None:
        """The document, or None when absent."""

    def put(self, kind: str, scope: str, key: str, doc: Document) -> None:
        """Create or replace."""

    def insert(self, kind: str, scope: str, key: str, doc: Document) -> bool:
        """Create only: False (and nothing written) when the key exists already."""

    def delete(self, kind: str, scope: str, key: str) -> bool:
        """True when something was deleted."""

    def move(self, kind: str, scope: str, key: str, new_key: str, doc: Document) -> bool:
        """Give the record at `key` a new key and document, as a delete and a put would, in one
        write: False (and nothing written) when `key` is absent. `new_key` must be free (or be
        `key`): taking another record's key is a StoreError."""

    def delete_scope(self, kind: str, scope: str) -> int:
        """Delete every record of `kind` in `scope`; returns how many."""

    def scan(
        self, kind: str, scope: str, *, after: str | None = None, limit: int | None = None
    ) -> list[tuple[str, Document]]:
        """(key, doc) pairs of one scope in ascending key order, keys strictly after `after`,
        at most `limit` of them (None: all; a negative limit is a ValueError)."""

    def scan_values(self, kind: str, scope: str, field: str) -> list[tuple[str, Any]]:
        """(key, doc[field]) pairs of one scope in ascending key order, None where the field is
        absent, without decoding whole documents. For scalar fields only (a string, a number
        or null; a boolean comes back as 1 or 0); `field` is an identifier."""

    def scopes(self, kind: str) -> list[str]:
        """Every scope that holds at least one record of `kind`, ascending."""

    def count(self, kind: str, scope: str | None = None) -> int:
        """How many records of `kind` (in `scope`, or in all scopes)."""

    def next_sequence(self, name: str) -> int:
        """1, 2, 3... per name; a number returned to a unit that committed is never returned
        again, even after the records that used it are deleted (Lambda never reuses a version
        number). A unit that rolls back gives its number back, like everything else it did."""


class MetadataStore(Protocol):
    async def atomically(self, work: Callable[[Tx], T]) -> T:
        """Run `work` as one read-write transaction and return its result."""

    async def read(self, work: Callable[[Tx], T]) -> T:
        """Run `work` with read-only access (writes raise StoreError)."""

    async def close(self) -> None:
        """Finish pending work and release the database. Idempotent."""


@dataclass(frozen=True)
class BlobRef:
    sha256_hex: str
    size: int


class BlobStore(Protocol):
    async def put(self, data: bytes) -> BlobRef:
        """Store `data` durably; idempotent on identical content."""

    async def get(self, sha256_hex: str) -> bytes:
        """The exact bytes; KeyError when absent."""

    async def exists(self, sha256_hex: str) -> bool: ...

    async def delete(self, sha256_hex: str) -> bool:
        """Remove a blob nobody references any more; True when it existed."""

    def local_path(self, sha256_hex: str) -> Path:
        """Where the blob lives on this host's disk (for streaming and the code cache)."""
