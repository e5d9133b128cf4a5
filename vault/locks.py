"""Repository locks: shared (backup, restore, verify, forget, copy) and exclusive (prune, repair, key changes).

A lock is an object ``locks/<random id>`` holding JSON {host, pid, username, operation, exclusive, time,
refreshed, boot_id, pid_ns}. Acquiring writes our lock first and then looks for conflicting ones (so two racing lockers
cannot both win); on conflict we remove ours and retry until ``wait`` runs out. A lock expires by itself:
one not refreshed for ``STALE_AFTER`` seconds, or one held by a dead process on this host, is ignored, so a
crashed cron job never blocks the next night's run. Held locks are refreshed by a daemon thread.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from .backend.base import Backend
from .errors import LockLost, ObjectNotFound, RepositoryLocked, VaultError
from .fsmeta import username


_LOCK_NAME = re.compile(r"locks/[0-9a-f]{32}")
STALE_AFTER = 30 * 60.0
STORES_PACKS = ("backup", "copy", "prune", "repair")  # operations that store packs (a killed one leaves some)
MAX_LOCK_BYTES = 64 * 1024
REFRESH_EVERY = 5 * 60.0


@dataclass(frozen=True)
class LockInfo:
    name: str
    host: str
    pid: int
    username: str
    operation: str
    exclusive: bool
    time: float
    refreshed: float
    boot_id: str = ""  # ("" in locks written before vault recorded them)
    pid_ns: str = ""

    def describe(self) -> str:
        if self.operation == "malformed" and self.pid == 0:  # (``list_locks``'s stand-in for one that does not parse)
            return f"malformed lock object {self.name}"
        kind = "exclusive" if self.exclusive else "shared"
        age = max(0, int(time.time() - self.time))
        return f"{kind} lock held by {self.operation} (pid {self.pid} on {self.host}, {age}s ago)"

    def is_stale(self, now: float) -> bool:
        """Not refreshed for STALE_AFTER, or held on this machine by a process that is gone. A lock with this
        host name is this machine's only when written in this boot (another boot's holder is gone with it)
        and in this PID namespace: a container given the host's name (``docker --network host``) runs in a
        namespace of its own, where the pid names another process, or none here -- its live lock must not be
        taken for a dead one. Locks of vault versions that did not record them are judged by the pid alone."""
        if now - self.refreshed > STALE_AFTER:
            return True
        if self.pid == os.getpid() and on_this_machine(self.host, self.boot_id, self.pid_ns):
            # this process's: one it released whose delete the store did not carry out (or a dead one's, its pid
            # now ours)
            return self.name not in {lk._name for lk in list(_live)}
        return process_gone(self.host, self.pid, self.boot_id, self.pid_ns)


@functools.cache
def _this_machine() -> tuple[str, str]:
    """(this boot's id, this process's PID namespace), "" for what cannot be read; read once (neither changes
    while the process runs), not for every lock judged and written."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    try:
        ns = os.stat("/proc/self/ns/pid")
        pid_ns = f"{ns.st_dev}:{ns.st_ino}"
    except OSError:
        pid_ns = ""
    return boot, pid_ns


def this_process() -> tuple[str, int, str, str]:
    """(host name, pid, boot id, PID namespace) of this process: what a lock records of its holder."""
    return (socket.gethostname(), os.getpid(), *_this_machine())


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc; "" when it cannot be read: no such
    process, or no /proc): with the pid, it names one process -- a pid alone is given to another once freed."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # (after the name, which may hold anything)
        return fields[19].decode("ascii")
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        return ""


def on_this_machine(host: str, boot: str, pid_ns: str) -> bool:
    """Whether a process so recorded ran on this machine, in this boot and PID namespace ("": not recorded)."""
    this_boot, this_ns = _this_machine()
    return (host == socket.gethostname() and not (boot and this_boot and boot != this_boot)
            and not (pid_ns and this_ns and pid_ns != this_ns))


def process_gone(host: str, pid: int, boot: str, pid_ns: str) -> bool:
    """Whether the process so recorded is known to be gone: it ran on this host in an earlier boot, or in this
    boot and PID namespace and its pid is dead. False when it cannot be told (another host, another namespace)."""
    if host != socket.gethostname():
        return False
    this_boot, this_ns = _this_machine()
    if boot and this_boot and boot != this_boot:
        return True
    if pid_ns and this_ns and pid_ns != this_ns:
        return False
    return not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if not 0 < pid < 1 << 22:  # (Linux's pid_max at most; kill(-1, 0) would ask about every process)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_locks(backend: Backend, ours: str | None = None) -> list[LockInfo]:
    """Every lock object but ``ours`` (not read back: a round trip for what we wrote)."""
    out = []
    for name, size in backend.list("locks/"):
        if not _LOCK_NAME.fullmatch(name) or name == ours:  # (a note, a folder marker: not a lock; never judged
            continue                                         # or removed)
        try:
            if size > MAX_LOCK_BYTES:  # (a lock is ~200 bytes: a huge one is not read, only removable)
                raise ValueError("oversized lock")
            d = json.loads(backend.get(name, 0, size))  # (as listed: a cut body is retried, not "malformed")
            info = LockInfo(name, str(d["host"]), int(d["pid"]), str(d.get("username", "")),
                            str(d.get("operation", "")), bool(d["exclusive"]), float(d["time"]),
                            float(d.get("refreshed", d["time"])), str(d.get("boot_id", "")), str(d.get("pid_ns", "")))
            # (a time in the future stays live: a host whose clock runs ahead may well be running a backup)
            if not (math.isfinite(info.time) and math.isfinite(info.refreshed) and 0 < info.pid < 1 << 31):
                raise ValueError("impossible values")
            out.append(info)
        except ObjectNotFound:
            continue
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
            # A malformed lock cannot be honoured; treat it as stale (unlock removes it).
            out.append(LockInfo(name, "?", 0, "", "malformed", False, 0.0, 0.0))
    return out


_live: "weakref.WeakSet[Lock]" = weakref.WeakSet()


def _hold_refreshers() -> None:
    """Before a fork: no refresher is half way through a write (the child gets a consistent copy)."""
    for lk in list(_live):
        lk._mutex.acquire()


def _free_refreshers() -> None:
    for lk in list(_live):
        if lk._mutex.locked():
            lk._mutex.release()


os.register_at_fork(before=_hold_refreshers, after_in_parent=_free_refreshers, after_in_child=_free_refreshers)


class Lock:
    """A held lock; use as a context manager. ``release()`` is idempotent."""

    def __init__(self, backend: Backend, exclusive: bool, operation: str, wait: float,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.backend, self.exclusive, self.operation = backend, exclusive, operation
        self._clock, self._sleep = clock, sleep
        self._name: str | None = None
        self._started = clock()
        self._refreshed = self._started  # when our lock object was last written
        self._removed = False  # another process removed our lock object (see _refresher)
        self.others: list[LockInfo] = []  # the other locks, live or stale, there when ours was taken
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._acquire(wait)
        self._thread = threading.Thread(target=self._refresher, name="vault-lock-refresh", daemon=True)
        self._thread.start()
        _live.add(self)

    def _write(self) -> str:
        now = self._clock()
        boot, pid_ns = _this_machine()
        doc = {"host": socket.gethostname(), "pid": os.getpid(), "username": username(),
               "operation": self.operation, "exclusive": self.exclusive, "time": self._started, "refreshed": now,
               "boot_id": boot, "pid_ns": pid_ns}
        name = f"locks/{secrets.token_hex(16)}"
        self.backend.put(name, json.dumps(doc).encode())
        return name

    def _acquire(self, wait: float) -> None:
        deadline = self._clock() + max(0.0, wait)
        delay = 0.2
        recheck = 0
        while True:
            self._name = self._write()
            now = self._clock()
            try:
                others = list_locks(self.backend, self._name)
                conflicts = [lk for lk in others if not lk.is_stale(now) and (self.exclusive or lk.exclusive)]
                if self.exclusive and not conflicts and others:
                    # the stale locks an exclusive command overrides are removed: a holder still running (its
                    # clock behind ours, or suspended) then finds its lock gone at its next refresh or check and
                    # commits nothing, instead of a snapshot naming packs this command may delete
                    for lk in others:
                        try:
                            self.backend.delete(lk.name)
                        except VaultError:
                            pass  # (not ours to delete here, e.g. permission: overridden as before)
                    # a holder that refreshed in between wrote a new lock after the listing: look again (a new
                    # lock is judged like any other: live -> wait, stale -> removed in turn)
                    listed = {lk.name for lk in others}
                    if recheck < 5 and any(lk.name != self._name and lk.name not in listed
                                           for lk in list_locks(self.backend, self._name)):
                        recheck += 1
                        self.backend.delete(self._name)
                        self._name = None
                        continue
            except BaseException:  # (another's lock unreadable, the store gone, a signal): ours goes too
                try:
                    self.backend.delete(self._name)
                except Exception:
                    pass
                self._name = None
                raise
            if not conflicts:
                self.others = others
                return
            self.backend.delete(self._name)
            self._name = None
            if self._clock() >= deadline:
                raise RepositoryLocked(f"repository is locked: {conflicts[0].describe()}; "
                                       "wait with --lock-wait, or remove a stale lock with 'vault unlock'")
            self._sleep(min(delay, max(0.0, deadline - self._clock())) + secrets.randbelow(100) / 1000)
            delay = min(delay * 2, 5.0)

    def others_may_have_left_packs(self) -> bool:
        """Whether another lock of a run that stores packs, or one that cannot be read, was there when ours was
        taken, live or stale: a killed run (SIGKILL, power loss, the OOM killer) leaves its lock behind, and may
        have left packs no index segment names, for a backup or copy to adopt. (Runs that end any other way
        without naming every pack they stored leave a mark in this machine's catalog instead:
        ``session.Session.begin_storing``.)"""
        return any(lk.operation in STORES_PACKS or lk.operation == "malformed" for lk in self.others)

    def _refresher(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                if not self._refresh():
                    return
            except VaultError:
                continue  # try again at the next tick; the lock only goes stale after STALE_AFTER

    def _refresh(self) -> bool:
        """Write our lock anew and remove the old object; False once released."""
        with self._mutex:
            if self._name is None:
                return False
            old, self._name = self._name, self._write()
            self._refreshed = self._clock()
            try:  # (after the new one is written: a removal before that write is seen here)
                self.backend.size(old)
            except ObjectNotFound:  # removed by another: an exclusive command took it for stale (deletes are
                self._removed = True  # idempotent: asked, not told by the delete below)
            self.backend.delete(old)
            return True

    def check(self) -> None:
        """Raise unless the lock is still ours: its object exists and was refreshed recently enough that no
        other process can have taken it for stale. Called before a commit point (a snapshot, prune's deletes)."""
        with self._mutex:
            name = self._name
            if name is None:
                raise LockLost("the repository lock was released")
            if self._clock() - self._refreshed > STALE_AFTER - REFRESH_EVERY:
                raise LockLost("the repository lock could not be refreshed for too long and may have been "
                               "taken over (was the machine suspended?); nothing was committed, run again")
            try:
                if self._removed:
                    raise ObjectNotFound(name)
                self.backend.size(name)
            except ObjectNotFound:
                raise LockLost("the repository lock was removed (by 'vault unlock --remove-all', or by an exclusive "
                               "command on a host whose clock runs ahead, which took it for stale); nothing was "
                               "committed, run again") from None

    def release(self) -> None:
        self._stop.set()
        with self._mutex:
            if self._name is not None:
                try:
                    self.backend.delete(self._name)
                except VaultError:
                    pass  # it will go stale by itself
                self._name = None

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_locks(backend: Backend, all_locks: bool, now: float | None = None) -> list[LockInfo]:
    """Remove stale locks (or every lock with ``all_locks``); return what was removed."""
    now = time.time() if now is None else now
    removed = []
    for lk in list_locks(backend):
        if all_locks or lk.is_stale(now):
            backend.delete(lk.name)
            removed.append(lk)
    return removed

