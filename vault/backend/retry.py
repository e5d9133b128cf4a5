"""RetryBackend: retries TransientError with exponential backoff and full jitter.

Only ``TransientError`` is retried; every other error passes through at once. After the last attempt the
final TransientError is raised with a note saying how many attempts were made.

A ``put`` whose attempt failed transiently may still have landed (the response was lost). If a retry then
finds the name taken (ObjectExists), the stored object is read back: equal bytes mean our earlier attempt
succeeded, so the put succeeds; anything else re-raises ObjectExists.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from vault.backend.base import Backend
from vault.errors import ObjectExists, TransientError

T = TypeVar("T")


def retry_transient(fn: Callable[[], T], attempts: int, backoff: Callable[[int], None], where: str) -> T:
    """Call ``fn`` up to ``attempts`` times while it raises TransientError, ``backoff(i)`` between tries."""
    for attempt in range(attempts):
        try:
            return fn()
        except TransientError as err:
            if attempt == attempts - 1:
                err.add_note(f"gave up after {attempts} attempts on {where}")
                raise
        backoff(attempt)
    raise AssertionError("unreachable")


class RetryBackend:
    """Wrap ``inner`` so each method is tried up to ``attempts`` times on TransientError.

    The delay before retry ``i`` (0-based) is uniform in ``[0, min(max_delay, base_delay * 2**i)]``.
    ``sleep`` and ``rng`` are injectable so tests run instantly and deterministically.
    """

    def __init__(
        self,
        inner: Backend,
        attempts: int = 6,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], object] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.location = inner.location
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()

    def _backoff(self, retry: int) -> None:
        self._sleep(self._rng.uniform(0, min(self.max_delay, self.base_delay * 2**retry)))

    def _call(self, fn: Callable[[], T]) -> T:
        return retry_transient(fn, self.attempts, self._backoff, self.location)

    def put(self, name: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        """Put with retries; ObjectExists after a transient failure is success if the bytes match."""
        failed_before = False
        for attempt in range(self.attempts):
            try:
                self.inner.put(name, data, overwrite=overwrite)
                return
            except ObjectExists:
                if failed_before and self._stored_equals(name, data):
                    return
                raise
            except TransientError as err:
                failed_before = True
                if attempt == self.attempts - 1:
                    err.add_note(f"gave up after {self.attempts} attempts on {self.location}")
                    raise
            self._backoff(attempt)

    @property
    def supports_staging(self) -> bool:
        return getattr(self.inner, "supports_staging", False)

    def stage(self, directory: str):
        """The inner backend's staged write, not retried (only local directories stage: their errors are not
        transient; a failure fails the pack, as a failed put does after its retries)."""
        return self.inner.stage(directory)

    def _stored_equals(self, name: str, data: bytes | memoryview) -> bool:
        expected = data if isinstance(data, bytes) else bytes(data)
        if self._call(lambda: self.inner.size(name)) != len(expected):
            return False
        return self._call(lambda: self.inner.get(name)) == expected

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Get with retries."""
        return self._call(lambda: self.inner.get(name, offset, length))

    def get_into(self, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
        """``get`` into a reused buffer where the store can (see ``LocalBackend.get_into``), else ``get``."""
        fn = getattr(self.inner, "get_into", None)
        if fn is None:
            return memoryview(self._call(lambda: self.inner.get(name, offset, length)))
        return self._call(lambda: fn(name, offset, length, buf))

    def size(self, name: str) -> int:
        """Size with retries."""
        return self._call(lambda: self.inner.size(name))

    def exists(self, name: str) -> bool:
        """Exists with retries."""
        return self._call(lambda: self.inner.exists(name))

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        """List with retries, streamed (a listing of a million packs is never held whole). Backends list in
        name order, so after a transient failure the listing resumes after the last name already yielded
        (nothing is yielded twice or skipped), and a try that made progress does not count against the
        attempts: a listing of a thousand pages gets through a steady low rate of faults."""
        last: str | None = after
        attempt = 0
        while True:
            progressed = False
            try:
                for name, size in self.inner.list(prefix, last):
                    if last is not None and name <= last:
                        continue
                    yield name, size
                    last, progressed = name, True
                return
            except TransientError as err:
                attempt = 0 if progressed else attempt + 1
                if attempt >= self.attempts - 1:
                    err.add_note(f"gave up after {self.attempts} attempts on {self.location}")
                    raise
            self._backoff(attempt)

    def delete(self, name: str) -> None:
        """Delete with retries (deleting is idempotent)."""
        self._call(lambda: self.inner.delete(name))

    def exists_store(self) -> bool:
        """exists_store with retries."""
        return self._call(self.inner.exists_store)

    def list_multipart_uploads(self) -> list[tuple[str, str, float]]:
        """Unfinished multipart uploads (object stores only; [] elsewhere), with retries."""
        fn = getattr(self.inner, "list_multipart_uploads", None)
        return [] if fn is None else self._call(fn)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort an unfinished multipart upload, with retries (idempotent)."""
        self._call(lambda: self.inner.abort_multipart(key, upload_id))

    def remove_temp_files(self, dry_run: bool = False) -> tuple[int, int]:
        """Leftover temp files of killed writers, (how many, bytes) (stores that have them; none elsewhere)."""
        fn = getattr(self.inner, "remove_temp_files", None)
        return fn(dry_run=dry_run) if fn is not None else (0, 0)

    def create_store(self) -> None:
        """create_store with retries."""
        self._call(self.inner.create_store)

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()

    def __repr__(self) -> str:
        return f"RetryBackend({self.inner!r}, attempts={self.attempts})"
