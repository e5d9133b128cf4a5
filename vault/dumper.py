"""``vault dump``: one file of a snapshot to a stream as it was (restic's ``dump``, borg's ``extract --stdout``),
or anything else (a directory, a symlink, a device) as a POSIX tar stream of it and what is below it. Every
block is checked against its id as restore checks it; a block that is damaged or missing stops the dump with
the file named (IntegrityError, exit 20): what was written before it is a cut stream, never wrong bytes
passed off as whole. Memory stays flat: blocks are located a batch at a time and read a window ahead."""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from .catalog import Catalog
from .errors import IntegrityError, ObjectNotFound, VaultError
from .model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node
from .repository import Repository

LOOKUP_BATCH = 256  # block ids located in the catalog per query

_TAR_TYPES = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE, FIFO: tarfile.FIFOTYPE,
              CHARDEV: tarfile.CHRTYPE, BLOCKDEV: tarfile.BLKTYPE}


class Dumper:
    def __init__(self, repo: Repository, catalog: Catalog, out: BinaryIO, window: int = 4,
                 warn: Callable[[str], None] = lambda _m: None):
        self.repo, self.catalog, self.out = repo, catalog, out
        self.window = max(1, window)
        self.warn = warn
        self.bytes_written = 0
        self.entries = 0

    # --- one file's bytes ---------------------------------------------------------------------------
    def _blocks(self, path: bytes, node: Node) -> Iterator[bytes]:
        """The file's content, block by block, each checked; IntegrityError names the file. Blocks are located
        LOOKUP_BATCH at a time, and at most ``window`` are read ahead of the writer (a slow reader, or blocks of
        8 MiB: memory stays a few blocks)."""
        name = os.fsdecode(path)
        total = 0
        ids = iter(node.blocks)
        located: collections.deque = collections.deque()
        with ThreadPoolExecutor(max_workers=self.window, thread_name_prefix="vault-dump") as pool:
            ahead: collections.deque = collections.deque()
            while True:
                while len(ahead) < self.window:
                    if not located:
                        batch = [bid for _, bid in zip(range(LOOKUP_BATCH), ids)]
                        if not batch:
                            break
                        where = self.catalog.lookup_many(batch)
                        missing = {bid for bid in batch if bid not in where}
                        if missing:
                            self.catalog.check_not_lacking(self.repo, missing, "dump again")
                            raise IntegrityError(f"{name}: block {min(missing).hex()[:16]} is in no index segment "
                                                 "(data missing; 'vault verify' names the damage)")
                        located.extend(where[bid] for bid in batch)
                    ahead.append(pool.submit(self.catalog.load_block, self.repo, located.popleft()))
                if not ahead:
                    break
                try:
                    data = ahead.popleft().result()
                except IntegrityError as exc:
                    raise IntegrityError(f"{name}: damaged: {exc}") from None
                except ObjectNotFound as exc:  # (a pack gone from the store: damage, as restore and verify say)
                    raise IntegrityError(f"{name}: missing: {exc}") from None
                total += len(data)
                if total > node.size:
                    break
                yield data
        if total != node.size:
            raise IntegrityError(f"{name}: its blocks hold {total} bytes, its entry says {node.size} (damaged tree)")

    def file(self, path: bytes, node: Node) -> None:
        with writing():
            for data in self._blocks(path, node):
                self.out.write(data)
                self.bytes_written += len(data)
        self.entries += 1

    # --- a tree as tar ------------------------------------------------------------------------------
    def tar(self, entries: Iterator[tuple[bytes, Node]]) -> None:
        """A POSIX (pax) tar stream of ``entries`` (path, node), paths relative to the root as tar writes
        absolute ones. Hard links within the stream are tar links; sockets cannot be in a tar (a warning)."""
        if self.out.isatty():  # (restic refuses any dump to a terminal; one file of text there is useful)
            raise VaultError("a tar stream is not written to a terminal: redirect it (> FILE.tar, | tar -x)")
        links: dict[tuple[int, int], str] = {}
        with writing(), tarfile.open(fileobj=self.out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                                      errors="surrogateescape") as tf:
            for path, node in entries:
                name = os.fsdecode(path.lstrip(b"/")) or "."
                if node.type == SOCKET:
                    self.warn(f"{os.fsdecode(path)}: a socket cannot be put in a tar stream: left out")
                    continue
                ti = tarfile.TarInfo(name)
                ti.type = _TAR_TYPES[node.type]
                ti.mode = stat.S_IMODE(node.mode)
                ti.uid, ti.gid = node.uid, node.gid
                ti.uname = ti.gname = ""
                ti.mtime = node.mtime_ns // 1_000_000_000
                if node.mtime_ns % 1_000_000_000:  # (exact, in decimal: through a float 0.99999995 s was the next
                    sec, ns = divmod(abs(node.mtime_ns), 1_000_000_000)  # second, and above 2^33 s 1.9 us off)
                    ti.pax_headers["mtime"] = f"{'-' if node.mtime_ns < 0 else ''}{sec}.{ns:09d}".rstrip("0")
                if node.type == SYMLINK:
                    ti.linkname = os.fsdecode(node.target or b"")
                elif node.type in (CHARDEV, BLOCKDEV):
                    ti.devmajor, ti.devminor = os.major(node.rdev), os.minor(node.rdev)
                if node.type != DIR and node.nlink > 1:  # (a symlink's, a FIFO's names too: restore links them)
                    key = (node.dev, node.inode)
                    if key in links:
                        ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
                        tf.addfile(ti)
                        self.entries += 1
                        continue
                    links[key] = name
                if node.type == FILE:
                    ti.size = node.size
                    tf.addfile(ti, _Reader(self._blocks(path, node)))
                    self.bytes_written += node.size
                else:
                    tf.addfile(ti)
                self.entries += 1

    def preorder(self, base: bytes, tree_id: bytes) -> Iterator[tuple[bytes, Node]]:
        """Every entry below the tree ``tree_id`` (at ``base``), each directory followed at once by its whole
        content: tar's order (GNU tar sets a directory's mtime when it meets the first entry outside it -- with all
        of a directory's entries before their contents, the directories got the time of the extraction). One
        tree per level is held (an explicit stack: no recursion limit)."""
        stack: list[tuple[bytes, Iterator[Node]]] = [(base, iter(self.catalog.tree(self.repo, tree_id)))]
        while stack:
            where, entries = stack[-1]
            child = next(entries, None)
            if child is None:
                stack.pop()
                continue
            path = where + b"/" + child.name
            yield path, child
            if child.type == DIR and child.subtree is not None:
                stack.append((path, iter(self.catalog.tree(self.repo, child.subtree))))


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """Writing to the output fails (a full disk behind the redirection, `ulimit -f`): one line, exit 1 -- not an
    internal error. A closed pipe stays BrokenPipeError (exit 141, as any writer's)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        hint = " (the file-size limit, `ulimit -f`?)" if exc.errno == errno.EFBIG else ""
        raise VaultError(f"cannot write the output: {exc.strerror or exc}{hint}") from None


class _Reader:
    """A file object over an iterator of byte strings (what ``tarfile.addfile`` reads a member's data from)."""

    def __init__(self, pieces: Iterator[bytes]):
        self._pieces, self._buf = pieces, memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if not self._buf:
                nxt = next(self._pieces, None)
                if nxt is None:
                    break
                self._buf = memoryview(nxt)
            take = len(self._buf) if n < 0 else min(n - len(out), len(self._buf))
            out += self._buf[:take]
            self._buf = self._buf[take:]
        return bytes(out)
