"""CountingBackend: counts requests by type and bytes moved, for stats and for tests.

Request types follow S3's: PUT (put), GET (get), LIST (list), DELETE (delete), HEAD (size, exists,
exists_store). A request is counted when it is made, whether or not it succeeds; bytes up are counted per
put made, bytes down per get that returned. ``create_store`` and ``close`` are not counted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from vault.backend.base import Backend

REQUEST_TYPES = ("PUT", "GET", "LIST", "DELETE", "HEAD")


class CountingBackend:
    """Wrap ``inner`` and count what goes through it. Thread-safe."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location
        self._lock = threading.Lock()
        self._requests = dict.fromkeys(REQUEST_TYPES, 0)
        self._bytes_up = 0
        self._bytes_down = 0

    def _count(self, kind: str, up: int = 0) -> None:
        with self._lock:
            self._requests[kind] += 1
            self._bytes_up += up

    def reset(self) -> None:
        """In a forked worker (one thread): count from zero, what it does itself and not what its parent had
        done, under a lock of its own (another thread of the parent may have held the inherited one)."""
        self._lock = threading.Lock()
        self._requests = dict.fromkeys(REQUEST_TYPES, 0)
        self._bytes_up = self._bytes_down = 0

    def stats(self) -> dict[str, Any]:
        """``{"requests": {"PUT": n, "GET": n, "LIST": n, "DELETE": n, "HEAD": n}, "bytes_up": n, "bytes_down": n}``"""
        with self._lock:
            return {"requests": dict(self._requests), "bytes_up": self._bytes_up, "bytes_down": self._bytes_down}

    def put(self, name: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        """Count a PUT of ``len(data)`` bytes, then put."""
        self._count("PUT", up=memoryview(data).nbytes)
        self.inner.put(name, data, overwrite=overwrite)

    @property
    def supports_staging(self) -> bool:
        return getattr(self.inner, "supports_staging", False)

    def stage(self, directory: str):
        """The inner backend's staged write; its publish is counted as one PUT of the whole object."""
        staged = self.inner.stage(directory)
        publish = staged.publish

        def counted(name: str) -> None:
            self._count("PUT", up=staged.size)
            publish(name)
        staged.publish = counted
        return staged

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Count a GET, then the bytes it returned."""
        self._count("GET")
        data = self.inner.get(name, offset, length)
        with self._lock:
            self._bytes_down += len(data)
        return data

    def get_into(self, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
        """``get`` into a reused buffer where the store can (see ``LocalBackend.get_into``), else ``get``."""
        self._count("GET")
        fn = getattr(self.inner, "get_into", None)
        data = fn(name, offset, length, buf) if fn is not None else memoryview(self.inner.get(name, offset, length))
        with self._lock:
            self._bytes_down += len(data)
        return data

    def size(self, name: str) -> int:
        """Count a HEAD."""
        self._count("HEAD")
        return self.inner.size(name)

    def exists(self, name: str) -> bool:
        """Count a HEAD."""
        self._count("HEAD")
        return self.inner.exists(name)

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        """Count one LIST per call -- or, for a store that lists in pages (S3: up to 1,000 keys a request; it
        calls ``on_page`` for each), one per page: what is billed. (It counted one per call: 7 where the server
        got 12 for 1,000 snapshots.)"""
        if getattr(self.inner, "on_page", False) is None:
            self.inner.on_page = lambda: self._count("LIST")
        if getattr(self.inner, "on_page", None) is None:
            self._count("LIST")
        return self.inner.list(prefix, after)

    def delete(self, name: str) -> None:
        """Count a DELETE."""
        self._count("DELETE")
        self.inner.delete(name)

    def exists_store(self) -> bool:
        """Count a HEAD."""
        self._count("HEAD")
        return self.inner.exists_store()

    def list_multipart_uploads(self) -> list[tuple[str, str, float]]:
        """Unfinished multipart uploads of an object store (none elsewhere); one LIST."""
        fn = getattr(self.inner, "list_multipart_uploads", None)
        if fn is None:
            return []
        self._count("LIST")
        return fn()

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Count a DELETE."""
        self._count("DELETE")
        self.inner.abort_multipart(key, upload_id)

    def remove_temp_files(self, dry_run: bool = False) -> tuple[int, int]:
        """Leftover temp files of killed writers, (how many, bytes) (stores that have them; none elsewhere)."""
        fn = getattr(self.inner, "remove_temp_files", None)
        return fn(dry_run=dry_run) if fn is not None else (0, 0)

    def create_store(self) -> None:
        """Not counted."""
        self.inner.create_store()

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()


def sum_stats(stats: Iterable[dict]) -> dict:
    """``CountingBackend.stats`` of several backends (a restore's worker processes) added up."""
    out: dict = {"requests": {}, "bytes_up": 0, "bytes_down": 0}
    for st in stats:
        for kind, n in st.get("requests", {}).items():
            out["requests"][kind] = out["requests"].get(kind, 0) + n
        out["bytes_up"] += st.get("bytes_up", 0)
        out["bytes_down"] += st.get("bytes_down", 0)
    return out
