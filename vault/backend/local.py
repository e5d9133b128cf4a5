"""LocalBackend: objects are files under a root directory, at their slash-separated name.

Writes follow the contract in ``base.py``: the data goes to a temp file (``.tmp-<16 hex>``) in the target
directory, is fsynced, then hard-linked under its final name (create-only, atomic: ``link`` fails if the name
is taken) or renamed over it (``overwrite=True``), and the directory is fsynced. Parent directories
(``data/ab/``) are created on demand. OSError is translated once, in ``_os_errors``, into vault's error tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from vault.backend.base import STORE_CONTENT, check_name, exists_by_size
from vault.errors import BackendError, ObjectExists, ObjectNotFound, PermanentError, TransientError

TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{16}")  # (TEMP_PREFIX + secrets.token_hex(8): exactly what ``put`` makes)
_FANOUT = re.compile(r"[0-9a-f]{2}")

_PERMANENT = {
    errno.ENOSPC: "disk full",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    # this machine's limits, not the store's state: never reported as damage (``errors.is_damage``)
    errno.EMFILE: "too many open files",
    errno.ENFILE: "the system's table of open files is full",
    errno.ENOMEM: "out of memory",
    errno.EFBIG: "file too large (for this process's file-size limit, `ulimit -f`, or the file system)",
}
if hasattr(errno, "EDQUOT"):
    _PERMANENT[errno.EDQUOT] = "disk quota exceeded"

# A network file system (NFS, SMB, sshfs) that dropped its connection: retried, and never taken as damage.
_TRANSIENT = {getattr(errno, n) for n in ("ENOTCONN", "ESTALE", "ETIMEDOUT", "EHOSTDOWN", "EHOSTUNREACH",
                                          "ENETDOWN", "ENETUNREACH", "ECONNRESET", "ECONNABORTED", "EAGAIN",
                                          "EINTR") if hasattr(errno, n)}

# link() is not supported everywhere (exFAT/FAT USB drives, some network and FUSE file systems).
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def translate_os_error(err: OSError, verb: str, name: str, root: str, *, missing: bool) -> BackendError:
    """Map an OSError to our error tree. ``missing`` makes ENOENT/ENOTDIR an ObjectNotFound."""
    what = f"{name} in {root}" if name else root
    if missing and err.errno in (errno.ENOENT, errno.ENOTDIR):
        return ObjectNotFound(f"{name} not found in {root}")
    if err.errno in _TRANSIENT:
        return TransientError(f"error {verb} {what}: {err.strerror or err}")
    reason = _PERMANENT.get(err.errno or 0)
    if err.errno == errno.ENOSPC and _no_inodes(root):  # (df shows room: "disk full" sent people looking in vain)
        reason = "no free inodes (the file system has room, but no more files: df -i)"
    if reason:
        hint = " (raise the limit: `ulimit -n`)" if err.errno == errno.EMFILE else ""
        return PermanentError(f"{reason} {verb} {what}{hint}")
    return BackendError(f"error {verb} {what}: {err.strerror or err}")


def _no_inodes(root: str) -> bool:
    try:
        st = os.statvfs(root)
    except OSError:
        return False
    return st.f_files > 0 and st.f_favail == 0 and st.f_bavail > 0


def _fsync_dir(path: str) -> None:
    """Make a directory's entries (a new name, a new subdirectory) durable."""
    if os.name == "nt":  # directories cannot be opened (or fsynced) on Windows
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid range offset={offset} length={length}")


class LocalBackend:
    """A store in a local (or mounted) directory. ``location`` is the absolute root path."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.path.abspath(os.fspath(root))
        self.location = self.root
        self._modes: tuple[int, int, int] | None = None  # see ``_modes_of_root``

    def _modes_of_root(self) -> tuple[int, int, int]:
        """(new directories' mode, new objects' mode, the group bits forced on both), from the root's (as restic
        follows its config's): the process's umask applies, and nothing is ever writable by others (a root made
        under umask 000 gave every directory 0777: any local user could delete packs); a group-shared root
        (setgid or group-writable: 2770) gives its group bits to what is written whatever the umask (a member's
        umask 022 left directories another member could not add a pack to)."""
        if self._modes is None:
            try:
                root = stat.S_IMODE(os.stat(self.root).st_mode)
            except OSError:
                root = 0o700
            dirs = (root & 0o2775) | 0o700  # (setgid kept: new entries take the shared group)
            shared = root & 0o2070 if root & 0o2020 else 0
            self._modes = (dirs, (dirs & 0o664) | 0o600, shared)
        return self._modes

    # -- helpers -------------------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        check_name(name)
        if name.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
            raise ValueError(f"invalid object name {name!r} (reserved for temp files)")
        return os.path.join(self.root, *name.split("/"))

    @contextmanager
    def _os_errors(self, verb: str, name: str, *, missing: bool = False) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            exc = translate_os_error(err, verb, name, self.root, missing=missing)
            if isinstance(exc, ObjectNotFound) and name.startswith(STORE_CONTENT) and self._gone():
                exc = PermanentError(f"store {self.root} is gone (unmounted or moved?): {name} cannot be read")
            raise exc from err

    def _gone(self) -> bool:
        """True when the store itself has disappeared (an unmounted disk, a dropped network mount: the root is
        missing, or an empty directory -- the mount point left behind): an object missing then is not evidence
        of damage, only that nothing can be read here now."""
        try:
            with os.scandir(self.root) as it:
                return next(it, None) is None
        except FileNotFoundError:
            return True
        except OSError:  # (a root that may be searched but not listed, 0711: there, so not gone)
            return False

    def _make_dirs(self, directory: str) -> None:
        """Create ``directory`` and its missing parents below root, fsyncing each parent."""
        if not os.path.isdir(self.root):
            raise PermanentError(f"store {self.root} does not exist")
        missing = []
        while directory != self.root and not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        mode, _, shared = self._modes_of_root()
        for path in reversed(missing):
            try:
                os.mkdir(path, mode)
            except FileExistsError:  # another writer made it; a file in the way fails on open
                continue
            if shared:  # (a shared repository: the umask may have taken the group's bits)
                with suppress(OSError):
                    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | shared)
            _fsync_dir(os.path.dirname(path))

    def _open_temp(self, directory: str) -> tuple[int, str]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        for attempt in (1, 2):
            tmp = os.path.join(directory, TEMP_PREFIX + secrets.token_hex(8))
            _, mode, shared = self._modes_of_root()
            try:
                fd = os.open(tmp, flags, mode)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                self._make_dirs(directory)
                continue
            shared &= 0o060
            if shared:  # (a shared repository: the group's bits whatever the umask)
                with suppress(OSError):
                    os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | shared)
            return fd, tmp
        raise AssertionError("unreachable")

    def _link_into_place(self, name: str, tmp: str, final: str) -> None:
        """Create-only publish: link fails with EEXIST if the name is taken."""
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise ObjectExists(f"{name} already exists in {self.root}") from None
        except OSError as err:
            if err.errno not in _NO_LINK:
                raise
            # No hard links here: check, then rename. Racy only against a concurrent writer of the same
            # name, which for content-addressed names writes the same bytes.
            if os.path.lexists(final):
                raise ObjectExists(f"{name} already exists in {self.root}") from None
            os.rename(tmp, final)

    # -- staged writes (optional; see ``Staged``) -----------------------------------------------------------

    supports_staging = True

    def stage(self, directory: str) -> "Staged":
        """An object written piece by piece into a temp file in ``directory`` (an object-name prefix such as
        ``data``), named only when complete: a pack's name is the hash of all its bytes, and writing it as
        it fills keeps only the unwritten part of it in memory."""
        return self._staged(self._path(directory), directory)

    def _staged(self, path: str, label: str) -> "Staged":
        with self._os_errors("writing", label):
            fd, tmp = self._open_temp(path)
        return Staged(self, fd, tmp, label)

    # -- the Backend protocol ------------------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        """Write ``data`` atomically and durably under ``name`` (see the module docstring)."""
        staged = self._staged(os.path.dirname(self._path(name)), name)
        try:
            staged.write_at(data, 0)
        except BaseException:
            staged.discard()
            raise
        staged.publish(name, overwrite=overwrite)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read the object, or ``length`` bytes from ``offset`` (short when the range passes the end)."""
        path = self._path(name)
        _check_range(offset, length)
        with self._os_errors("reading", name, missing=True):
            fd, st = self._open_object(path, name)
            try:
                # (never more than the file holds: pread allocates what it is asked for, so a bounded read of a
                # small object -- a segment read up to the format's 512 MiB -- took that much address space)
                length = max(st.st_size - offset, 0) if length is None else min(length, max(st.st_size - offset, 0))
                parts: list[bytes] = []
                pos, remaining = offset, length
                while remaining > 0:
                    part = os.pread(fd, remaining, pos)
                    if not part:
                        break
                    parts.append(part)
                    pos += len(part)
                    remaining -= len(part)
                return b"".join(parts)
            finally:
                os.close(fd)

    def _open_object(self, path: str, name: str) -> tuple[int, os.stat_result]:
        """An object opened for reading, and its fstat; ObjectNotFound when it is not a regular file (opened
        non-blocking: a FIFO planted in a hostile repository would block the open until a writer came)."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ObjectNotFound(f"{name} not found in {self.root} (not a regular file)")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def get_into(self, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
        """``get`` of a range into ``buf`` (grown if needed, reused by the caller: no fresh pages to fault
        in for every range); a view of the bytes read, short when the range passes the end."""
        _check_range(offset, length)
        if len(buf) < length:
            buf.extend(bytes(length - len(buf)))
        view = memoryview(buf)[:length]
        with self._os_errors("reading", name, missing=True):
            fd, _ = self._open_object(self._path(name), name)
            try:
                got = 0
                while got < length:
                    n = os.preadv(fd, [view[got:]], offset + got)
                    if not n:
                        break
                    got += n
                return view[:got]
            finally:
                os.close(fd)

    def size(self, name: str) -> int:
        """Return the object's size. Raises ObjectNotFound."""
        path = self._path(name)
        with self._os_errors("reading", name, missing=True):
            st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{name} not found in {self.root} (not a regular file)")
        return st.st_size

    def exists(self, name: str) -> bool:
        """True when ``name`` is a stored object."""
        return exists_by_size(self, name)

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        """Yield (name, size) for objects starting with ``prefix`` (and after ``after``); only the directories
        it names are walked.

        Temp files are skipped. Names come in name order (directories are walked sorted, and repository
        names never put a file beside a directory whose name it extends)."""
        head, _, _ = prefix.rpartition("/")
        if head:
            check_name(head)
        start = os.path.join(self.root, *head.split("/")) if head else self.root
        with self._os_errors("listing", prefix or "/"):
            for item in self._walk(start, head + "/" if head else "", prefix):
                if after is None or item[0] > after:
                    yield item

    def _walk(self, directory: str, name_prefix: str, prefix: str) -> Iterator[tuple[str, int]]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            name = name_prefix + entry.name
            if entry.name.startswith(TEMP_PREFIX):
                continue
            if entry.is_dir(follow_symlinks=False):
                if prefix.startswith(name + "/") or (name + "/").startswith(prefix):
                    yield from self._walk(entry.path, name + "/", prefix)
            elif name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                try:
                    yield name, entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:  # deleted while we listed
                    continue

    def remove_temp_files(self, prefixes: tuple[str, ...] = ("data/", "index/", "snapshots/"),
                          aged: tuple[str, ...] = ("locks/", "logs/", "keys/"), min_age: float = 3600.0,
                          dry_run: bool = False) -> tuple[int, int]:
        """Delete the temp files a killed writer left under ``prefixes``; only call this while holding the
        exclusive lock (every writer of those directories holds a lock). Under ``aged`` -- written without the
        lock (a lock object is written before its locker looks), or by a run whose lock was taken over -- only
        those older than ``min_age`` seconds. Returns (how many, their bytes); ``dry_run``: counted, not deleted."""
        removed = size = 0
        now = time.time()
        for prefix in (*prefixes, *aged):
            top = os.path.join(self.root, prefix.rstrip("/"))
            # only where this backend writes (data/<2 hex>/ for packs, the directory itself for the others) and
            # only its own names (``.tmp-<16 hex>``): a data/ that is a symlink (to another disk) was walked
            # whole, and every `.tmp-*` file anywhere below its target deleted
            dirs = [top]
            if prefix == "data/":
                with contextlib.suppress(OSError):
                    dirs += [os.path.join(top, d) for d in os.listdir(top) if _FANOUT.fullmatch(d)]
            for dirpath in dirs:
                try:
                    files = os.listdir(dirpath)
                except OSError:
                    continue
                for f in files:
                    if _TEMP_NAME.fullmatch(f):
                        path = os.path.join(dirpath, f)
                        with contextlib.suppress(FileNotFoundError):
                            st = os.lstat(path)
                            if not stat.S_ISREG(st.st_mode) or (prefix in aged and now - st.st_mtime < min_age):
                                continue
                            if not dry_run:
                                os.unlink(path)
                            removed += 1
                            if st.st_nlink == 1:  # (a second name of a published pack frees nothing: a writer
                                size += st.st_blocks * 512  # killed between its link and its unlink left it)
        return removed, size

    def delete(self, name: str) -> None:
        """Remove the object; a missing object is not an error."""
        path = self._path(name)
        with self._os_errors("deleting", name):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def exists_store(self) -> bool:
        """True when the root directory exists and holds a ``config`` file."""
        return os.path.isdir(self.root) and os.path.isfile(os.path.join(self.root, "config"))

    def create_store(self) -> None:
        """Create the root directory (and its parents) if needed."""
        with self._os_errors("creating", ""):
            os.makedirs(os.path.dirname(self.root), exist_ok=True)
            try:
                os.mkdir(self.root, 0o700)
            except FileExistsError:  # (a directory made beforehand keeps its mode: a group-shared 2770 is
                if not os.path.isdir(self.root):  # followed, see ``_modes_of_root``; a file is in the way)
                    raise
            self._modes = None

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"LocalBackend({self.root!r})"


class Staged:
    """A temp file being written at offsets; ``publish`` makes it durable under its final name (fsync, then a
    create-only link or, with ``overwrite``, a rename, then fsync of the directory); ``discard`` removes it.
    ``put`` is a staged write of one piece. Not thread-safe: the pack writer calls it under its lock."""

    def __init__(self, backend: LocalBackend, fd: int, tmp: str, label: str):
        self.backend, self.fd, self.tmp, self.label = backend, fd, tmp, label
        self.size = 0

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        with memoryview(data) as mv, self.backend._os_errors("writing", self.label):
            done = 0
            while done < mv.nbytes:
                n = os.pwrite(self.fd, mv[done:], offset + done)
                if n <= 0:  # no progress (never loop forever): report it as a full disk
                    raise OSError(errno.ENOSPC, "no space left: write made no progress")
                done += n
            self.size = max(self.size, offset + mv.nbytes)

    def publish(self, name: str, *, overwrite: bool = False) -> None:
        """Raises ObjectExists when the name is taken and not ``overwrite`` (the temp file is removed
        either way)."""
        b = self.backend
        final = b._path(name)
        directory = os.path.dirname(final)
        try:
            with b._os_errors("writing", name):
                os.fsync(self.fd)
                os.close(self.fd)
                self.fd = -1
                if overwrite:
                    os.replace(self.tmp, final)
                else:
                    try:
                        b._link_into_place(name, self.tmp, final)
                    except FileNotFoundError:  # its directory (data/ab/) does not exist yet
                        b._make_dirs(directory)
                        b._link_into_place(name, self.tmp, final)
                _fsync_dir(directory)
        finally:
            self.discard()

    def discard(self) -> None:
        if self.fd >= 0:
            with suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with suppress(OSError):
            os.unlink(self.tmp)
