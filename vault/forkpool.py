"""Worker processes forked from this one, each answering the messages sent to it one at a time.

Restore uses them to write files in parallel without the GIL: with threads, every one of the half-dozen
system calls a small file needs hands the GIL to another thread and back (~700,000 futex calls and 200,000
context switches for 55,000 files); two single-threaded processes do the same work in a third less CPU.

A child is a fork of the caller: it starts at once and shares the parent's memory (copy on write; ``gc.freeze``
keeps the collector from touching, and so copying, the inherited objects). It runs only ``handler`` on what
it is sent and must not use what cannot cross a fork (a SQLite connection, sockets of the parent's clients:
``child_init`` makes fresh ones). It dies with its parent (``PR_SET_PDEATHSIG``), leaves through ``os._exit``
(never the parent's atexit handlers, such as releasing the repository lock) and reports an exception of
``handler`` to the parent, which raises it again from ``receive``.
"""

from __future__ import annotations

import gc
import os
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

from .errors import VaultError


def available() -> bool:
    return hasattr(os, "fork") and hasattr(os, "register_at_fork")


class WorkerError(VaultError):
    pass


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _serve(conn: Connection, handler: Callable[[Any], Any], child_init: Callable[[], None] | None) -> int:
    if child_init is not None:
        child_init()
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return 1
        if msg is None:
            return 0
        try:
            reply = (True, handler(msg))
        except Exception as exc:  # noqa: BLE001 -- carried to the parent, which raises it
            vault = isinstance(exc, VaultError)
            reply = (False, (vault, str(exc) if vault else traceback.format_exc()))
        conn.send(reply)


class ForkPool:
    """``n`` forked workers; ``send(i, msg)`` to an idle one, ``receive()`` the next reply of any busy one."""

    def __init__(self, n: int, handler: Callable[[Any], Any], child_init: Callable[[], None] | None = None):
        self._conns: list[Connection] = []
        self._pids: list[int] = []
        self.busy: list[bool] = []
        parent = os.getpid()
        gc.freeze()  # inherited objects are never scanned in the children (no copy-on-write of every page)
        try:
            for _ in range(n):
                mine, theirs = Pipe()
                pid = os.fork()
                if pid == 0:  # the child: never returns
                    code = 1
                    try:
                        mine.close()
                        for c in self._conns:
                            c.close()
                        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent reports it
                        _die_with_parent(parent)
                        code = _serve(theirs, handler, child_init)
                    finally:
                        os._exit(code)
                theirs.close()
                self._conns.append(mine)
                self._pids.append(pid)
                self.busy.append(False)
        except BaseException:
            self.close(kill=True)
            raise
        finally:
            gc.unfreeze()

    def __len__(self) -> int:
        return len(self._conns)

    def send(self, i: int, msg: Any) -> None:
        self._conns[i].send(msg)
        self.busy[i] = True

    def receive(self, timeout: float | None = None) -> tuple[int, Any] | None:
        """The reply of a busy worker (which is idle again), or None when none came within ``timeout``."""
        ready = wait([c for c, b in zip(self._conns, self.busy) if b], timeout)
        if not ready:
            return None
        i = self._conns.index(ready[0])
        try:
            ok, value = self._conns[i].recv()
        except (EOFError, OSError):
            raise WorkerError("a restore worker process died") from None
        self.busy[i] = False
        if not ok:
            vault, text = value
            if vault:
                raise VaultError(text)
            raise RuntimeError("in a worker process:\n" + text)
        return i, value

    def close(self, kill: bool = False) -> None:
        """Stop the workers (``kill``: at once, their current work unfinished) and reap them."""
        for conn, pid in zip(self._conns, self._pids):
            try:
                if kill:
                    os.kill(pid, signal.SIGKILL)
                else:
                    conn.send(None)
            except OSError:
                pass
            conn.close()
        for pid in self._pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self._conns, self._pids, self.busy = [], [], []
