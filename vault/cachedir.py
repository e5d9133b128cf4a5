"""The local cache directory: private to the user running vault, and never written through what others plant.

The catalog holds file names and metadata in clear (sealed, not encrypted: docs/format.md §17), and vault often
runs as root. A cache directory another user can write to let them plant symlinks where vault then creates its
files (a root vault truncated and rewrote a file of their choosing) and read the names. So: every directory vault
makes here is 0700; the repository's directory in it must be a real directory owned by this user (or root) that
no one else can write to; for root, so must the cache directory and the directories above it (as ssh's
StrictModes; a sticky directory such as /tmp may be world-writable: others cannot rename what is ours in it); the
small files vault writes here are made under a random name with O_EXCL and moved into place; files are opened
without following symlinks.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from .errors import CatalogError


def _why_unsafe(st: os.stat_result, sticky_ok: bool, owner: bool = True) -> str | None:
    """Why another user could change what is in this directory (None: no one can). A sticky one (/tmp) lets
    others add entries but not rename or delete ours: fine above the repository's own directory. ``owner``:
    it must be this user's or root's too (the cache directory and the repository's; above them only the write
    bits count -- a container's root below a workspace a host user owns is no attack)."""
    if owner and st.st_uid not in (os.geteuid(), 0):
        return f"it belongs to another user (uid {st.st_uid})"
    if sticky_ok and st.st_mode & stat.S_ISVTX:
        return None
    if st.st_mode & 0o002:
        return f"other users can write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & 0o020 and st.st_gid != os.getegid():
        return f"its group (gid {st.st_gid}) can write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _acl_lets_others_write(path: str, st: os.stat_result) -> bool:
    """An access ACL (setfacl) whose mask -- shown as the group bits -- lets a named user or group write: its
    mode bits alone said 0770 of this user's own group while another user could write."""
    if not st.st_mode & 0o020:
        return False
    try:
        names = os.listxattr(path)
    except OSError:
        return False
    return "system.posix_acl_access" in names or "system.nfs4_acl" in names


def _refuse(path: str, why: str) -> CatalogError:
    return CatalogError(f"cannot use the cache directory {path}: {why}; the cache holds file names in clear, and "
                        "vault would write through what others put there. Make it yours and private (chmod 700), or "
                        "give --cache-dir another place")


def private_dir(cache_dir: str, name: str) -> str:
    """``cache_dir/name``, made if missing (each level vault makes: 0700) and checked: it is a real directory, not
    a symlink, of this user (or root), that no one else can write to; and, when vault runs as root, so are the
    cache directory and every directory above (a sticky one above excepted). CatalogError (one line) otherwise;
    OSError when it cannot be made."""
    cache_dir = os.path.abspath(cache_dir)
    missing = []
    p = cache_dir
    while not os.path.lexists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
    # the cache directory and everything above it (symlinks followed, each checked where it points) -- for root,
    # whom a symlink swapped in there would make write anywhere; another user's vault is refused only a
    # repository directory that is not its own and private (a test harness's chmod 777 cache for `nobody`
    # keeps working; what such a vault could be made to write is that user's own)
    real = os.path.realpath(cache_dir)
    p = real
    while os.geteuid() == 0:
        st = os.stat(p)
        why = _why_unsafe(st, sticky_ok=True, owner=p == real)
        if why is None and not st.st_mode & stat.S_ISVTX and _acl_lets_others_write(p, st):
            why = "an access control list (ACL) may let other users write to it"
        if why is not None:
            raise _refuse(cache_dir, why if p == real else f"{p}, above it: {why}")
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    d = os.path.join(real, name)
    with contextlib.suppress(FileExistsError):
        os.mkdir(d, 0o700)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(d, "it is not a directory" + (" (a symlink)" if stat.S_ISLNK(st.st_mode) else ""))
    why = _why_unsafe(st, sticky_ok=False)
    if why is None and _acl_lets_others_write(d, st):
        why = "an access control list (ACL) may let other users write to it"
    if why is not None:
        raise _refuse(d, why)
    return d


def read_small(path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of the regular file ``path`` (never through a symlink, never blocking on a FIFO);
    None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def write_small(path: str, data: bytes, replace: bool = True) -> bool:
    """Write ``path`` whole (0600): made under a random name (O_EXCL) beside it, then renamed over it -- or,
    without ``replace``, linked to it (False when it exists: someone else wrote it first). OSError on failure;
    nothing is left behind."""
    fd, tmp = tempfile.mkstemp(prefix=".vault-", suffix=".tmp", dir=os.path.dirname(path))
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # (no hard links there, FAT)
            if os.path.lexists(path):
                return False
            os.replace(tmp, path)
            return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


__all__ = ["private_dir", "read_small", "write_small"]
