"""Filesystem metadata: ``stat`` -> Node, and applying a Node's metadata back (mode, owner, times).

Everything works on bytes paths. Nothing here follows symlinks when it touches metadata.
"""

from __future__ import annotations

import errno
import os
import stat

from .model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def node_type(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode):
        return CHARDEV
    if stat.S_ISBLK(mode):
        return BLOCKDEV
    if stat.S_ISSOCK(mode):
        return SOCKET
    return None


def node_from_stat(name: bytes, st: os.stat_result) -> Node:
    t = node_type(st.st_mode)
    if t is None:
        raise ValueError(f"unsupported file type {st.st_mode:o}")
    return Node(name=name, type=t, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                size=st.st_size if t == FILE else 0, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
                inode=st.st_ino, dev=st.st_dev, nlink=st.st_nlink,
                rdev=st.st_rdev if t in (CHARDEV, BLOCKDEV) else 0)


def stat_key(t: str, st: os.stat_result) -> tuple:
    """The metadata ``node_from_stat`` would record, in the catalog's entry order (``entries.py``): equal to a
    cached entry's key exactly when the stored entry says what ``lstat`` says now."""
    return (t, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size if t == FILE else 0, st.st_mtime_ns,
            st.st_ctime_ns, st.st_ino, st.st_dev, st.st_nlink, st.st_rdev if t in (CHARDEV, BLOCKDEV) else 0)


def apply_metadata(path: bytes, node: Node, mode_set: bool = False) -> list[str]:
    """Owner (when root), mode (not for symlinks; not when ``mode_set``: the file was created with exactly
    ``node.mode``, which holds no setuid/setgid bit a chown could clear) and mtime; return problems instead of
    raising."""
    problems = []
    if IS_ROOT:
        try:
            os.chown(path, node.uid, node.gid, follow_symlinks=False)
        except OSError as exc:
            problems.append(f"chown: {exc.strerror}")
        except OverflowError:  # the format allows ids up to 2**64-1; this system's uid_t does not
            problems.append(f"chown: owner {node.uid}:{node.gid} is out of this system's range")
    if not (node.type == SYMLINK or mode_set):
        try:
            os.chmod(path, node.mode)
        except OSError as exc:
            problems.append(f"chmod: {exc.strerror}")
    try:
        os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
    except OSError as exc:
        if not (node.type == SYMLINK and exc.errno in (errno.ENOTSUP, errno.EPERM)):
            problems.append(f"utime: {exc.strerror}")
    return problems


def current_umask() -> int:
    """The process umask, read without changing it where the kernel tells (Linux >= 4.7)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)  # the most restrictive value meanwhile, should another thread create a file
    os.umask(old)
    return old


def make_special(path: bytes, node: Node) -> None:
    """Create a fifo or device node (devices need root); sockets are not recreated."""
    if node.type == FIFO:
        os.mkfifo(path, 0o600)
    elif node.type in (CHARDEV, BLOCKDEV):
        kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
        os.mknod(path, 0o600 | kind, node.rdev)
    elif node.type == SOCKET:
        raise OSError(errno.ENOTSUP, "sockets are not restored")


__all__ = ["node_from_stat", "stat_key", "apply_metadata", "current_umask", "make_special", "node_type", "IS_ROOT", "DIR",
           "SOCKET"]
