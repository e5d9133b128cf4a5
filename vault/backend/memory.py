"""MemoryBackend: a dict-backed store with the same contract as the others, for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from vault.backend.base import check_name
from vault.errors import ObjectExists, ObjectNotFound


class MemoryBackend:
    """Objects live in a dict guarded by a lock. The store always exists; ``exists_store`` checks for ``config``."""

    def __init__(self, location: str = "memory:") -> None:
        self.location = location
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        """Store a copy of ``data``; ObjectExists if taken and not ``overwrite``."""
        check_name(name)
        blob = bytes(data)
        with self._lock:
            if not overwrite and name in self._objects:
                raise ObjectExists(f"{name} already exists in {self.location}")
            self._objects[name] = blob

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return the object, or ``length`` bytes from ``offset`` (short past the end)."""
        check_name(name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range offset={offset} length={length}")
        blob = self._lookup(name)
        end = len(blob) if length is None else offset + length
        return blob[offset:end]

    def size(self, name: str) -> int:
        """Return the object's size. Raises ObjectNotFound."""
        check_name(name)
        return len(self._lookup(name))

    def exists(self, name: str) -> bool:
        """True when ``name`` is stored."""
        check_name(name)
        with self._lock:
            return name in self._objects

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        """Yield (name, size) of a snapshot of the objects under ``prefix`` (after ``after``), sorted by name."""
        with self._lock:
            found = sorted((n, len(b)) for n, b in self._objects.items()
                           if n.startswith(prefix) and (after is None or n > after))
        return iter(found)

    def delete(self, name: str) -> None:
        """Remove the object; a missing object is not an error."""
        check_name(name)
        with self._lock:
            self._objects.pop(name, None)

    def exists_store(self) -> bool:
        """True once a ``config`` object was stored."""
        return self.exists("config")

    def create_store(self) -> None:
        """Nothing to create."""

    def close(self) -> None:
        """Nothing to release."""

    def _lookup(self, name: str) -> bytes:
        with self._lock:
            blob = self._objects.get(name)
        if blob is None:
            raise ObjectNotFound(f"{name} not found in {self.location}")
        return blob
