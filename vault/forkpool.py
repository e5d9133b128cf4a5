"""Worker processes forked from this one, each answering the messages sent to it one at a time.

Restore uses them to write files in parallel without the GIL: with threads, every one of the half-dozen
system calls a small file needs hands the GIL to another thread and back (~700,000 futex calls and 200,000
context switches for 55,000 files); two single-threaded processes do the same work in a third less CPU.
``verify --read-data`` uses them to check packs while the main process walks the trees (in threads, the walk
and the readers fought over the GIL).

A child is a fork of the caller: it starts at once and shares the parent's memory (copy on write; ``gc.freeze``
keeps the collector from touching, and so copying, the inherited objects). It runs only ``handler`` on what
it is sent and must not use what cannot cross a fork (a SQLite connection, sockets of the parent's clients:
``child_init`` makes fresh ones). It dies with its parent (``PR_SET_PDEATHSIG``), leaves through ``os._exit``
(never the parent's atexit handlers, such as releasing the repository lock), ignores Ctrl-C (the parent
decides: ``close`` lets the work in hand finish, as a thread pool would) and sends an exception of
``handler`` or ``child_init`` to the parent, which raises it from ``receive``.
"""

from __future__ import annotations

import gc
import os
import pickle
import queue
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

from . import stopsignals
from .errors import VaultError

# Python 3.12+ warns at every os.fork() while other threads run (the lock refresher and the upload threads
# do), a line on stderr whenever warnings are shown (python -W default, PYTHONWARNINGS, -X dev, pytest). The
# children here are made safe for it: vault's own locks are taken around the fork (register_at_fork in locks,
# catalog), stop signals are held over it (stopsignals), and a child builds its own backend (no connection,
# socket or SQLite handle of the parent is used) and never starts threads of the parent's pools. So that
# warning is silenced for these forks (``_fork``), not for others.
_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FORK_WARNING, category=DeprecationWarning)
        return os.fork()


def available() -> bool:
    return hasattr(os, "fork") and hasattr(os, "register_at_fork")


def cores() -> int:
    """The CPUs this process may run on (its affinity mask: ``taskset``, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fd_room(per: int = 4, reserve: int = 40) -> int:
    """How many workers (threads or processes) the descriptor limit leaves room for, ``per`` descriptors each
    after ``reserve`` for the rest (the catalog, the lock, the directory handles): at least 1. Asking for more
    than the limit allows ends in "Too many open files" half way through, not in a faster run."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1 << 16
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(1, (soft - reserve) // per)


class WorkerError(VaultError):
    pass


class ForkFailed(WorkerError):
    """Not one worker process could be started (fork's EAGAIN: `ulimit -u`, or memory): the callers then do the
    work in this process."""


class WorkerCrash(RuntimeError):
    """An unexpected exception in a worker: ``str`` is its one line; the child's traceback is a note."""


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _failure(exc: BaseException) -> tuple:
    """What the parent needs to raise ``exc`` again: the exception itself when it pickles (a VaultError keeps
    its class, so its exit code), else its one-line text; and the traceback."""
    tb = traceback.format_exc()
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001 -- an exception that does not travel: its text does
        blob = None
    return blob, f"{type(exc).__name__}: {exc}", tb


_conn: Connection | None = None  # in a worker: its connection to the parent
_STOP = object()
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def note(value: Any) -> None:
    """In a worker, while it handles a message: send ``value`` to the parent's ``on_note`` now, before the reply
    (e.g. a pack stored part way through one huge file, for the parent's next index checkpoint)."""
    _conn.send((None, value))


def _serve(conn: Connection, handler: Callable[[Any], Any], child_init: Callable[[], None] | None) -> int:
    global _conn
    _conn = conn
    failed = None
    if child_init is not None:
        try:
            child_init()
        except Exception as exc:  # noqa: BLE001 -- the answer to every message
            failed = _failure(exc)
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return 1
        if msg is None:
            return 0
        if failed is not None:
            conn.send((False, failed))
            continue
        try:
            reply = (True, handler(msg))
        except Exception as exc:  # noqa: BLE001 -- carried to the parent, which raises it
            reply = (False, _failure(exc))
        conn.send(reply)


class ForkPool:
    """``n`` forked workers; ``send(i, msg)`` to one (several may be queued: they are answered in order),
    ``receive()`` the next reply of any busy one. ``busy[i]`` counts the messages worker i has not answered."""

    def __init__(self, n: int, handler: Callable[[Any], Any], child_init: Callable[[], None] | None = None,
                 on_note: Callable[[int, Any], None] | None = None):
        self._on_note = on_note
        self._conns: list[Connection] = []
        self._pids: list[int] = []
        self.busy: list[int] = []
        self._writers: list[tuple[queue.SimpleQueue, threading.Thread] | None] = []
        self._dead: set[int] = set()
        parent = os.getpid()
        gc.freeze()  # inherited objects are never scanned in the children (no copy-on-write of every page)
        try:
            for _ in range(n):
                mine, theirs = Pipe()
                # Ctrl-C held back across the fork: the parent's handler must never run in a child
                old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
                pid = -1
                try:
                    with stopsignals.held():  # (the at-fork callbacks run Python code: see stopsignals)
                        pid = _fork()
                except BlockingIOError:  # (`ulimit -u`, or memory: the workers forked so far do the work)
                    mine.close()
                    theirs.close()
                    if self._conns:
                        break
                    raise ForkFailed("cannot start a worker process: the process limit is reached (`ulimit -u`) "
                                     "or memory is short") from None
                finally:
                    if pid != 0:
                        signal.pthread_sigmask(signal.SIG_SETMASK, old)
                if pid == 0:  # the child: never returns
                    code = 1
                    try:
                        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops us
                        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (systemd signals the whole group)
                        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # (a hung-up terminal, its whole group)
                        signal.pthread_sigmask(signal.SIG_SETMASK, old)
                        mine.close()
                        for c in self._conns:
                            c.close()
                        _die_with_parent(parent)
                        code = _serve(theirs, handler, child_init)
                    finally:
                        os._exit(code)
                theirs.close()
                self._conns.append(mine)
                self._pids.append(pid)
                self.busy.append(0)
                self._writers.append(None)
        except BaseException:
            self.close(kill=True)
            raise
        finally:
            gc.unfreeze()

    def __len__(self) -> int:
        return len(self._conns)

    def send_buffer(self) -> int:
        """Bytes a message to a worker may take before ``send`` waits for the worker to read (its socket's
        send buffer; a guess of 64 KiB when it cannot be asked)."""
        import socket

        try:
            with socket.socket(fileno=os.dup(self._conns[0].fileno())) as sock:
                return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except (OSError, IndexError):
            return 64 * 1024

    def send(self, i: int, msg: Any) -> None:
        try:
            self._conns[i].send(msg)
        except OSError:  # (BrokenPipeError would read as a closed stdout to click)
            raise WorkerError("a worker process died") from None
        self.busy[i] += 1

    def send_later(self, i: int, msg: Any) -> None:
        """``send`` from a writer thread of worker i's own, in order: this thread never waits for the worker to
        read (a message queued ahead of a busy worker may be bigger than the socket's buffer, and the worker
        may itself be waiting to send a big reply). A worker that died is found by ``receive``."""
        if self._writers[i] is None:
            q: queue.SimpleQueue = queue.SimpleQueue()
            t = threading.Thread(target=self._write_all, args=(self._conns[i], q, self._pids[i]), daemon=True,
                                 name=f"vault-worker-{i}-writer")
            t.start()
            self._writers[i] = (q, t)
        self.busy[i] += 1  # (counted first: an interrupt between the two never leaves a reply uncounted)
        self._writers[i][0].put(msg)

    @staticmethod
    def _write_all(conn: Connection, q: queue.SimpleQueue, pid: int) -> None:
        while (msg := q.get()) is not _STOP:
            try:
                conn.send(msg)
            except (OSError, ValueError):  # the worker died (or was killed): receive reports it
                return
            except BaseException:  # noqa: BLE001 -- a message that cannot be sent: never a silent wait for
                try:                #  its reply; the worker goes, and receive reports it as dead
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                return

    def _stop_writers(self) -> None:
        for w in self._writers:
            if w is not None:
                w[0].put(_STOP)
                w[1].join()
        self._writers = [None] * len(self._writers)

    def receive(self, timeout: float | None = None) -> tuple[int, Any] | None:
        """The next reply of a busy worker, or None when none came within ``timeout``. A ``note`` that comes
        first is handed to ``on_note`` (in this thread) and the wait goes on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not any(self.busy):
                return None
            # the idle ones too: one that dies while idle (the OOM killer) is noticed now, not at its next job
            ready = wait([c for i, c in enumerate(self._conns) if i not in self._dead], left)
            if not ready:
                return None
            i = self._conns.index(ready[0])
            # a reply taken in and its count must go together: Ctrl-C between the two would leave close()
            # waiting for a reply that already came (or one too few)
            old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                try:
                    ok, value = self._conns[i].recv()
                except (EOFError, OSError):
                    self.busy[i] = 0  # it answers nothing more (the others may still be waited for)
                    self._dead.add(i)
                    raise WorkerError("a worker process died") from None
                if ok is not None:
                    self.busy[i] -= 1
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            if ok is not None:
                break
            self._on_note(i, value)
        if not ok:
            blob, line, tb = value
            exc: BaseException
            try:
                exc = pickle.loads(blob) if blob is not None else WorkerCrash(line)
            except Exception:  # noqa: BLE001
                exc = WorkerCrash(line)
            exc.add_note("in a worker process:\n" + tb)
            raise exc
        return i, value

    def drain(self) -> None:
        """Wait for every reply due, whatever it is: a worker's error is an answer too (taken and dropped), a
        worker that died owes none. Only an interrupt stops the wait."""
        while any(self.busy):
            try:
                self.receive()
            except Exception:  # noqa: BLE001
                pass

    def close(self, kill: bool = False) -> None:
        """Stop the workers and reap them: the work in hand is finished first (its reply dropped), or with
        ``kill`` they are stopped at once."""
        if not kill:
            try:
                while any(self.busy):
                    self.receive()
            except BaseException:  # (a second Ctrl-C, a worker that died meanwhile)
                kill = True
        if kill:
            for pid in self._pids:
                try:
                    os.kill(pid, signal.SIGKILL)  # (a writer thread blocked on its socket fails now)
                except OSError:
                    pass
        self._stop_writers()
        for conn in self._conns:
            try:
                if not kill:
                    conn.send(None)
            except OSError:
                pass
            conn.close()
        for pid in self._pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self._conns, self._pids, self.busy, self._writers = [], [], [], []
