"""FaultBackend: a scripted fault injector for tests (in the spirit of Kopia's ``fault`` package).

Each rule (a ``Fault``) watches one operation on names under a prefix, counts the matching calls, and acts
on the ``nth`` one and the ``times - 1`` after it (``times=None``: every one from the ``nth`` on)::

    FaultBackend(MemoryBackend()).fail("put", prefix="data/", nth=3)          # 3rd pack upload fails once
    backend.fail("get", exc=PermanentError, times=None)                       # every get fails
    backend.fail("put", prefix="index/", after=True)                          # stored, but reported failed
    backend.flip_bit_on_get(prefix="data/")                                   # packs read back damaged
    backend.truncate_on_get(prefix="snapshots/", keep=10)
    backend.delay("list", 0.5)

Operations: put, get, size, exists, list (matched on its prefix argument), delete, exists_store,
create_store. ``rule.seen`` / ``rule.fired`` tell a test how often a rule matched and acted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from vault.backend.base import Backend
from vault.errors import TransientError

OPERATIONS = ("put", "get", "size", "exists", "list", "delete", "exists_store", "create_store")

Kind = Literal["fail", "flip_bit", "truncate", "delay"]


@dataclass
class Fault:
    """One rule of the script. ``kind`` says what to do when it fires."""

    op: str
    kind: Kind
    prefix: str = ""
    nth: int = 1
    times: int | None = 1
    exc: type[BaseException] | BaseException = TransientError
    after: bool = False  # fail: perform the call first, then raise (a lost response)
    seconds: float = 0.0  # delay
    position: int | None = None  # flip_bit: byte to damage (default: the middle one)
    keep: int | None = None  # truncate: bytes kept (default: half)
    seen: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPERATIONS:
            raise ValueError(f"unknown operation {self.op!r}; expected one of {OPERATIONS}")
        if self.nth < 1 or (self.times is not None and self.times < 1):
            raise ValueError("nth and times must be at least 1")

    def _due(self, op: str, name: str) -> bool:
        """Count a call; True when this rule acts on it. Caller holds the lock."""
        if op != self.op or not name.startswith(self.prefix):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.seen >= self.nth + self.times):
            return False
        self.fired += 1
        return True

    def error(self, name: str) -> BaseException:
        """The exception to raise for ``name``."""
        if isinstance(self.exc, BaseException):
            return self.exc
        return self.exc(f"injected fault: {self.op} {name}")

    def damage(self, data: bytes) -> bytes:
        """Apply a flip_bit or truncate rule to data read back."""
        if self.kind == "truncate":
            return data[: len(data) // 2 if self.keep is None else self.keep]
        if not data:
            return data
        pos = len(data) // 2 if self.position is None else min(self.position, len(data) - 1)
        return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


class FaultBackend:
    """Wrap ``inner`` and apply the scripted ``Fault`` rules. Builder methods return ``self``."""

    def __init__(
        self, inner: Backend, script: Iterable[Fault] = (), *, sleep: Callable[[float], object] = time.sleep
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.rules: list[Fault] = [*script]
        self._sleep = sleep
        self._lock = threading.Lock()

    # -- the script ----------------------------------------------------------------------------------------

    def add(self, rule: Fault) -> FaultBackend:
        """Append a rule."""
        with self._lock:
            self.rules.append(rule)
        return self

    def fail(
        self,
        op: str,
        *,
        prefix: str = "",
        nth: int = 1,
        times: int | None = 1,
        exc: type[BaseException] | BaseException = TransientError,
        after: bool = False,
    ) -> FaultBackend:
        """Raise ``exc`` on the nth matching call (and ``times - 1`` more); ``after``: once the call is done."""
        return self.add(Fault(op, "fail", prefix, nth, times, exc=exc, after=after))

    def flip_bit_on_get(
        self, prefix: str = "", *, nth: int = 1, times: int | None = None, position: int | None = None
    ) -> FaultBackend:
        """Flip the low bit of one byte of what matching gets return (every get unless ``times``)."""
        return self.add(Fault("get", "flip_bit", prefix, nth, times, position=position))

    def truncate_on_get(
        self, prefix: str = "", *, nth: int = 1, times: int | None = None, keep: int | None = None
    ) -> FaultBackend:
        """Return only the first ``keep`` bytes (default half) of matching gets."""
        return self.add(Fault("get", "truncate", prefix, nth, times, keep=keep))

    def delay(
        self, op: str, seconds: float, *, prefix: str = "", nth: int = 1, times: int | None = None
    ) -> FaultBackend:
        """Sleep ``seconds`` before matching calls."""
        return self.add(Fault(op, "delay", prefix, nth, times, seconds=seconds))

    # -- plumbing ------------------------------------------------------------------------------------------

    def _before(self, op: str, name: str) -> list[Fault]:
        """Run delays and up-front failures; return the rules to apply after the call."""
        with self._lock:
            due = [rule for rule in self.rules if rule._due(op, name)]
        for rule in due:
            if rule.kind == "delay":
                self._sleep(rule.seconds)
        for rule in due:
            if rule.kind == "fail" and not rule.after:
                raise rule.error(name)
        return [rule for rule in due if rule.kind != "delay"]

    @staticmethod
    def _after(due: list[Fault], name: str) -> None:
        for rule in due:
            if rule.kind == "fail":
                raise rule.error(name)

    def put(self, name: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        due = self._before("put", name)
        self.inner.put(name, data, overwrite=overwrite)
        self._after(due, name)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        due = self._before("get", name)
        data = self.inner.get(name, offset, length)
        self._after(due, name)
        for rule in due:
            data = rule.damage(data)
        return data

    def size(self, name: str) -> int:
        due = self._before("size", name)
        result = self.inner.size(name)
        self._after(due, name)
        return result

    def exists(self, name: str) -> bool:
        due = self._before("exists", name)
        result = self.inner.exists(name)
        self._after(due, name)
        return result

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        due = self._before("list", prefix)
        result = list(self.inner.list(prefix, after))
        self._after(due, prefix)
        return iter(result)

    def delete(self, name: str) -> None:
        due = self._before("delete", name)
        self.inner.delete(name)
        self._after(due, name)

    def exists_store(self) -> bool:
        due = self._before("exists_store", "")
        result = self.inner.exists_store()
        self._after(due, "")
        return result

    def create_store(self) -> None:
        due = self._before("create_store", "")
        self.inner.create_store()
        self._after(due, "")

    def close(self) -> None:
        self.inner.close()
