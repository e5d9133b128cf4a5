"""The Backend protocol: where objects live, and what a store must guarantee.

A backend stores opaque objects under slash-separated names (``data/ab/abcd...``, ``snapshots/<id>``).
It knows nothing of blocks, packs or crypto.

Guarantees every implementation must give (the contract tests in tests/test_backend_contract.py check them):

* **Atomic put.** After ``put`` returns, the whole object is durably stored under its name; a reader
  never sees a partial object, and a crash during ``put`` leaves either nothing or the whole object
  (local: temp file, fsync, rename, fsync of the directory; S3: single PUT or completed multipart upload).
* **Create-only by default.** ``put(name, data)`` refuses (``ObjectExists``) to replace an existing object
  unless ``overwrite=True`` is passed (nothing in vault needs it today). Nothing is rewritten in place.
* **Read-after-write.** ``get``/``exists``/``list`` see an object once ``put`` returned.
* **Errors are ours.** ``ObjectNotFound`` for a missing name, ``TransientError`` for anything worth a retry,
  ``PermanentError``/``BackendError`` otherwise; no OSError or botocore exception escapes.
* **Names are validated.** A name with ``..``, an empty component, a leading ``/`` or a NUL is refused
  (``ValueError``), so hostile input can never address anything outside the store.
* **Thread-safe.** Methods may be called from many threads at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from vault.errors import ObjectNotFound

_NAME_COMPONENT = re.compile(r"^[A-Za-z0-9._-]+$")
# objects only a store that is there holds: one of them missing while the store itself has gone away (an
# unmounted disk, a deleted bucket) is not evidence of damage (config and keys/ missing: no repository, exit 10)
STORE_CONTENT = ("data/", "index/", "snapshots/")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe object name, else raise ValueError."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\0" in name:
        raise ValueError(f"invalid object name {name!r}")
    for part in name.split("/"):
        if part in ("", ".", "..") or not _NAME_COMPONENT.match(part):
            raise ValueError(f"invalid object name {name!r}")
    return name


def check_prefix(prefix: str) -> str:
    """Return an S3 ``PREFIX`` if it is usable, else raise ValueError: components separated by ``/``, none empty,
    ``.`` or ``..``, no control characters, ``?`` or ``#`` (URL syntax); any other character S3 keys take is
    allowed (``backups/Server 1``, ``a+b``, ``host@site``, ``ünï``): the prefix is the user's, not an object name
    of the format, and boto3 encodes it."""
    if not isinstance(prefix, str) or not prefix or prefix.startswith("/"):
        raise ValueError(f"invalid prefix {prefix!r}")
    for part in prefix.split("/"):
        if part in ("", ".", "..") or any(c < " " or c in "\x7f?#" for c in part):
            raise ValueError(f"invalid prefix {prefix!r}")
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"invalid prefix {prefix!r}: not UTF-8") from None
    if size > 512:  # (a key is at most 1,024 bytes: room for names)
        raise ValueError(f"invalid prefix {prefix!r}: longer than 512 bytes")
    return prefix


def confirmed_size(backend: "Backend", name: str, expected: int | None = None, tries: int = 4) -> int:
    """``backend.size(name)``, asked again while it disagrees with ``expected``: an S3 head cut inside its
    Content-Length value (which stores send last) reads as a smaller number with nothing to show the cut, so a
    size that disagrees stands only once two answers in a row agree. ObjectNotFound passes through."""
    last = got = backend.size(name)
    for _ in range(tries - 1):
        if got == expected:
            return got
        got = backend.size(name)
        if got == last:
            return got
        last = got
    return got


def exists_by_size(backend: "Backend", name: str) -> bool:
    """``exists`` for stores whose cheapest existence check is the size lookup (a stat, a HEAD)."""
    try:
        backend.size(name)
    except ObjectNotFound:
        return False
    return True


@runtime_checkable
class Backend(Protocol):
    """A flat store of named objects. See the module docstring for the guarantees."""

    #: A human-readable location, for messages (``/srv/repo``, ``s3://bucket/prefix``).
    location: str

    def put(self, name: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        """Store ``data`` under ``name`` atomically. Raises ObjectExists if present and not overwrite."""

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return the object's bytes, or ``length`` bytes from ``offset``. Raises ObjectNotFound.

        A range reaching past the end returns what exists (possibly short); callers check lengths."""

    def size(self, name: str) -> int:
        """Return the object's size in bytes. Raises ObjectNotFound."""

    def exists(self, name: str) -> bool:
        """True when the object exists."""

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        """Yield (name, size) for every object whose name starts with ``prefix`` (e.g. ``"data/"``), in name
        order; with ``after``, only names after it (the retry wrapper resumes a listing there after a
        failure)."""

    def delete(self, name: str) -> None:
        """Remove the object. Deleting a missing object is not an error."""

    def exists_store(self) -> bool:
        """True when the store itself (directory, bucket) exists."""

    def create_store(self) -> None:
        """Create the store (directory, bucket) if needed, so ``put`` can work."""

    def close(self) -> None:
        """Release connections and threads."""
