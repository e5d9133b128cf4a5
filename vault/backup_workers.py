"""A local repository's backup reads its files in forked worker processes.

Why: with worker threads, every system call and every native step (hash, compress, encrypt) of a file hands
the GIL to another thread and back -- the bench's 55,000-file first backup spent ~2 CPU-s in futex wake-ups
alone, and the Python per file ran on one core at a time. Worker processes share no GIL.

Each worker is forked *before* this process opens the SQLite catalog (a connection must never cross a fork;
the worker opens its own, only if it has to ask the index). It is sent batches of files and for each one reads,
chunks, names, compresses and encrypts, into packs of its own that it stores itself (a local store: temp
file, fsync, rename; checked after write). Which blocks are new is decided through one table shared by all
(``claims``): a chunk cut by two workers is stored once. Each pack a worker stores is told to the main
process at once (``forkpool.note``), which names it in its next index checkpoint (the main process walks,
stores the trees, writes the index checkpoints, the catalog and the snapshot); the reply to a batch is its
files' results. ``finish`` has each worker store its partly filled pack; only then does the
main process write the last index segment and the snapshot -- the order of writes is the same as with threads.
"""

from __future__ import annotations

import collections
import mmap
from typing import Any

from .catalog import block_lookup
from .claims import Claims
from .filereader import FileReader, FileResult, from_wire, to_wire
from . import forkpool
from .forkpool import ForkPool
from .pack import PackEntry
from .packwriter import PackWriter
from .repository import Repository

DEPTH = 3  # batches sent to a worker before its first reply comes back (it never waits for the next one)
ROOM = 96 * 1024  # bytes of messages a busy worker may have unread (at most half its socket's buffer): a send
                  # must never wait for a worker that may itself be waiting to send this process a note
QUEUED = 2  # batches waiting for a worker, per worker, before ``submit`` waits (bounded memory: the files
#            of every batch sent or waiting, and their results, are held here: 8 cost ~5 MiB more at peak)

class Pending:
    """The files of one batch sent (or to be sent) to a worker: ``done`` / ``result`` as a Future's."""

    __slots__ = ("_workers", "files", "value", "finished", "size")

    def __init__(self, workers: "BackupWorkers", files: bool = True):
        self._workers, self.files, self.value, self.finished, self.size = workers, files, None, False, 0

    def done(self) -> bool:
        if not self.finished:
            self._workers.pump(block=False)
        return self.finished

    def result(self) -> list[FileResult]:
        while not self.finished:
            self._workers.pump(block=True)
        return self.value

    def wait(self, timeout: float) -> None:
        """Until this batch is answered, or about ``timeout`` seconds (a progress line meanwhile)."""
        if not self.finished:
            self._workers.pump(block=True, timeout=timeout)


class BackupWorkers:
    def __init__(self, repo: Repository, processes: int, catalog_path: str):
        self.claims = Claims(processes=True)  # (OSError: no anonymous file for its lock: the caller uses threads)
        self._repo, self._catalog_path = repo, catalog_path
        self._on_pack = None
        self._waiting: collections.deque = collections.deque()
        self._abort = mmap.mmap(-1, 1)  # shared: set by ``close``, the workers read no further
        self._pool = ForkPool(processes, self._serve, self._child_init, on_note=self._noted)
        # (per worker forked: fewer than asked for when the process limit stopped the forks, `ulimit -u`)
        self._sent: list[collections.deque] = [collections.deque() for _ in range(len(self._pool))]
        self._unread = [0] * len(self._pool)  # bytes of the messages sent to each worker and not answered yet
        self._room = min(ROOM, self._pool.send_buffer() // 2)
        self._finished = False
        self.requests: list[dict] = []  # what each worker's requests were (known once it finished)

    # --- in the worker ------------------------------------------------------------------------------
    def _child_init(self) -> None:
        self._counter = getattr(self._repo.backend, "inner", None)  # (a RetryBackend over a CountingBackend)
        if not hasattr(self._counter, "reset"):
            self._counter = None
        else:
            self._counter.reset()
        # each pack stored is told to the parent at once, so a checkpoint can name it even in a huge file
        self._packer = PackWriter(self._repo, self._stored, uploaders=0, prefault=False, spill=1 << 20)
        self._reader = FileReader(self._repo, self.claims, self._packer.add, block_lookup(self._catalog_path),
                                  lookups=True, cancelled=lambda: self._abort[0] != 0)

    @staticmethod
    def _stored(pid: bytes, size: int, entries: list[PackEntry]) -> None:
        """Tell the parent at once (entries as plain tuples: pickling dataclasses is slow)."""
        forkpool.note((pid, size, [(e.kind, e.block_id, e.offset, e.length, e.raw_length) for e in entries]))

    def _serve(self, msg: tuple) -> Any:
        kind, arg = msg
        if kind == "files":
            files, self._reader.lookups = arg
            results = [to_wire(r) for r in self._reader.read_files(files)]
        elif kind == "flush":  # the reply's results: the requests this worker made
            self._packer.flush()
            results = self._counter.stats() if self._counter is not None else None
        else:  # "close": what was not flushed is dropped (its staged temp file removed)
            self._packer.close()
            results = None
        return results

    # --- in the main process ------------------------------------------------------------------------
    def _noted(self, worker: int, pack: tuple) -> None:
        pid, size, entries = pack
        self._on_pack(pid, size, [PackEntry(*e) for e in entries])

    def start(self, on_pack) -> None:
        """``on_pack(pack id, size, entries)`` is called (in this process) for each pack a worker stored."""
        self._on_pack = on_pack

    def submit(self, files: list[tuple[bytes, bytes, tuple[int, int]]], lookups: bool) -> Pending:
        fut = Pending(self)
        size = sum(len(path) + len(name) + 24 for path, name, _ in files)
        self._waiting.append((fut, ("files", (files, lookups)), size))
        self.pump(block=False)  # (replies taken in as they come: a worker's queue is refilled without delay)
        while len(self._waiting) > QUEUED * len(self._sent):
            self.pump(block=True)
        return fut

    def _feed(self) -> None:
        while self._waiting:
            i = min(range(len(self._sent)), key=lambda k: len(self._sent[k]))
            fut, msg, size = self._waiting[0]
            if self._sent[i] and (len(self._sent[i]) >= DEPTH or self._unread[i] + size > self._room):
                return
            self._waiting.popleft()
            self._pool.send(i, msg)
            self._sent[i].append(fut)
            self._unread[i] += size
            fut.size = size

    def pump(self, block: bool, timeout: float | None = None) -> None:
        """Take in the replies that have come (with ``block``, wait for at least one, at most ``timeout``
        seconds), then send more."""
        got = self._pool.receive(timeout if block and any(self._pool.busy) else 0)
        while got is not None:
            i, results = got
            fut = self._sent[i].popleft()
            self._unread[i] -= fut.size
            if fut.files:
                results = [from_wire(r) for r in results]
            fut.value, fut.finished = results, True
            got = self._pool.receive(0)
        self._feed()

    def finish(self) -> None:
        """Every batch answered: each worker stores its partly filled pack; then they exit."""
        while any(self._sent) or self._waiting:
            self.pump(block=True)
        flushes = []
        for i in range(len(self._sent)):
            flushes.append(Pending(self, files=False))
            self._pool.send(i, ("flush", None))
            self._sent[i].append(flushes[-1])
        while any(self._sent):
            self.pump(block=True)
        self.requests = [fut.value for fut in flushes if fut.value is not None]
        self._finished = True
        self._pool.close()

    def close(self) -> None:
        """Stop the workers, unless ``finish`` did. The files in hand and queued are given up (the shared abort
        flag: a worker stops between two chunks), then each worker drops its open pack, removing its temp file
        -- also after another worker failed or died. A second interrupt while waiting kills them at once."""
        if self._finished:
            return
        self._finished = True
        self._abort[0] = 1
        try:
            self._pool.drain()
            for i in range(len(self._sent)):
                try:
                    self._pool.send(i, ("close", None))
                except forkpool.WorkerError:  # that one is gone
                    pass
            self._pool.drain()
        except BaseException:  # noqa: BLE001 -- (Ctrl-C again) killed below
            self._pool.close(kill=True)
            return
        self._pool.close()
