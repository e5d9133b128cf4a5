"""Filesystem metadata: ``stat`` -> Node, and applying a Node's metadata back (mode, owner, times, extended
attributes: on Linux also POSIX ACLs and file capabilities).

Everything works on bytes names and descriptors. Nothing here follows symlinks when it touches metadata.
"""

from __future__ import annotations

import errno
import os
import stat

from .model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, XATTR_MAX_TOTAL, Node

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


TYPE_OF = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK, stat.S_IFIFO: FIFO, stat.S_IFCHR: CHARDEV,
           stat.S_IFBLK: BLOCKDEV, stat.S_IFSOCK: SOCKET}  # st_mode's file-type bits -> the node type (a backup's
#                                                          walk looks it up inline: one dict lookup an entry)


def node_type(mode: int) -> str | None:
    return TYPE_OF.get(stat.S_IFMT(mode))


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


_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
_ROOT_ONLY = (b"trusted.", b"security.")  # namespaces only root may set (as owners: left out without root)
Xattrs = tuple[tuple[bytes, bytes], ...]


def entry_path(dir_fd: int, name: bytes) -> bytes:
    """A path naming entry ``name`` of the directory open as ``dir_fd`` (also an O_PATH one) without looking up
    anything else: Linux has no ``*xattrat`` calls before 6.13, and ``/proc/self/fd/N`` is that very directory.
    Used with follow_symlinks=False only."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def _nofollow(target: int | bytes) -> dict:
    """The keyword for an ``os.*xattr`` call on ``target``: a path's final symlink is never followed (a
    descriptor takes no such keyword)."""
    return {} if type(target) is int else {"follow_symlinks": False}


def read_xattrs(target: int | bytes) -> tuple[Xattrs | None, str | None]:
    """(the extended attributes of the file open as ``target`` (a descriptor) or at path ``target`` (not
    followed if a symlink), sorted by name, or None; a problem to warn about, or None). A file system
    without them has none; more than XATTR_MAX_TOTAL bytes are not stored (a warning)."""
    by_fd = type(target) is int
    kw = _nofollow(target)
    try:
        names = os.listxattr(target, **kw)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return None, None
        if exc.errno == errno.ENOENT and not by_fd:
            if not os.path.isdir("/proc/self/fd"):  # (a chroot or sandbox without /proc: not silently none)
                return None, "extended attributes not read: /proc is not mounted"
            return None, None  # gone since its lstat: as if listed a moment later
        return None, f"extended attributes not read: {exc.strerror or exc}"
    if not names:
        return None, None
    out, total = [], 0
    for name in names:
        try:
            value = os.getxattr(target, name, **kw)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed since the listing
                continue
            return None, f"extended attribute {name} not read: {exc.strerror or exc}"
        raw = os.fsencode(name)
        total += len(raw) + len(value)
        if total > XATTR_MAX_TOTAL:
            return None, f"extended attributes not stored: more than {XATTR_MAX_TOTAL >> 10} KiB"
        out.append((raw, value))
    return tuple(sorted(out)) or None, None


def apply_xattrs(target: int | bytes, xattrs: Xattrs | None, follow: bool = False) -> tuple[list[str], bool]:
    """Make the extended attributes of the file open as ``target`` or at path ``target`` (not followed) the
    snapshot's: set its own and remove others the entry carries -- an ACL the kernel gave a new file from its
    directory's default ACL, a stale attribute of a directory that was already there -- but never ``security.*``
    (labels the security modules give every new file). Without root, ``trusted.*`` and ``security.*`` are left
    alone, as owners are. (problems, at most one line per cause; whether an ACL was removed: the mode is then
    to be set again). ``follow``: a path that is to be followed (/proc/self/fd/N of an O_PATH descriptor)."""
    kw, want = ({} if follow else _nofollow(target)), dict(xattrs or ())
    try:
        have = os.listxattr(target, **kw)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return (["extended attributes not restored: the file system does not support them"] if want else []), False
        have = []
    failed: dict[str, list[str]] = {}
    acl_removed = False
    for name in have:
        raw = os.fsencode(name)
        if raw in want or raw.startswith(b"security.") or (not IS_ROOT and raw.startswith(_ROOT_ONLY)):
            continue
        try:
            os.removexattr(target, name, **kw)
            acl_removed = acl_removed or raw == b"system.posix_acl_access"
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                failed.setdefault(f"not removed (not in the snapshot): {exc.strerror or exc}", []).append(name)
    for name, value in want.items():
        if not IS_ROOT and name.startswith(_ROOT_ONLY):
            continue
        try:
            os.setxattr(target, name, value, **kw)
        except OSError as exc:  # (EOPNOTSUPP may concern this name only: btrfs.*, system.nfs4_acl on ext4)
            why = "not supported by the target file system" if exc.errno in _NO_XATTRS else exc.strerror or exc
            failed.setdefault(f"not restored: {why}", []).append(os.fsdecode(name))
    problems = []
    for why, names in failed.items():
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        problems.append(f"extended attribute{'s' if len(names) > 1 else ''} {', '.join(names[:3])}{more} {why}")
    return problems, acl_removed


def apply_metadata(fd: int, node: Node, mode_set: bool = False, owner_set: bool = False) -> list[str]:
    """Owner (when root; not when ``owner_set``: the file was created with it), mode (not when ``mode_set``:
    the file was created with exactly ``node.mode``, which holds no setuid/setgid bit a chown could clear) and
    mtime of the regular file open as ``fd``: set on what was opened, never on whatever a name leads to now.
    Problems are returned, not raised."""
    problems = []
    if IS_ROOT and not owner_set:
        try:
            os.fchown(fd, node.uid, node.gid)
        except OSError as exc:
            problems.append(f"chown: {exc.strerror}")
        except OverflowError:  # the format allows ids up to 2**64-1; this system's uid_t does not
            problems.append(f"chown: owner {node.uid}:{node.gid} is out of this system's range")
    elif not IS_ROOT and node.mode & stat.S_ISGID:
        _own_group(lambda: os.fchown(fd, -1, node.gid))
    # extended attributes after the owner (a chown clears file capabilities), before the mode (a read-only
    # mode would keep the owner from setting user.* ones)
    more, acl_removed = apply_xattrs(fd, node.xattrs)
    problems += more
    if not mode_set or acl_removed:
        mode = node.mode
        if mode & stat.S_ISUID and not IS_ROOT and node.uid != os.geteuid():
            # (the file is this user's now: setuid would run it as this user, not as the snapshot's owner;
            # cp -p and tar drop the bit the same way when they cannot keep the owner)
            mode &= ~stat.S_ISUID
            problems.append(f"setuid bit not kept: the file is owned by this user (uid {os.geteuid()}), not by the "
                            f"snapshot's owner (uid {node.uid})")
        try:
            os.fchmod(fd, mode)
            _check_set_ids(lambda: os.fstat(fd), node, problems, mode)
        except OSError as exc:
            problems.append(f"chmod: {exc.strerror}")
    try:
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
    except OSError as exc:
        problems.append(f"utime: {exc.strerror}")
    return problems


#: Metadata of directories, symlinks and special files is set through /proc/self/fd of an O_PATH descriptor of the
#: entry (``apply_metadata_at``); without /proc or O_PATH, by name.
_BY_DESCRIPTOR = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")


#: apply_metadata_at's problem for an entry that is not the one the restore made or found there
REPLACED = "metadata not set: replaced while the restore ran"


def apply_metadata_at(dir_fd: int, name: bytes, node: Node, made: tuple[int, int, int] | None = None) -> list[str]:
    """The same for the directory, symlink, fifo or device node ``name`` in the directory open as ``dir_fd``
    (which may be an O_PATH descriptor), set on exactly the entry checked, never on whatever the name leads to by
    the time each call is made: the entry is opened (O_PATH, no symlink followed) and must be of ``node``'s type,
    be the one ``made`` -- (dev, ino, owner) when the restore made or found it -- says, and, but for a directory,
    have one link. Else it is left alone, with a problem: someone who may write the directory above could have
    put a hardlink to a file of theirs under that name, or swapped two directories the restore made, which root
    would otherwise give the snapshot's owner and mode (a setgid program of theirs; a private directory theirs).
    On a file system whose inode numbers do not last (FUSE, overlayfs, FAT: a directory evicted from memory during
    a long restore comes back with another one) the owner alone is compared."""
    if not _BY_DESCRIPTOR:
        return _apply_by_name(dir_fd, name, node)
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if node.type == DIR else 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # (a file or a symlink where the directory was made)
            return [REPLACED]
        return [f"metadata not set: {exc.strerror or exc}"]
    try:
        st = os.fstat(fd)
        dev, ino, owner = made if made is not None else (st.st_dev, st.st_ino, os.geteuid())
        same = (node_type(st.st_mode) == node.type and st.st_uid == owner and (node.type == DIR or st.st_nlink == 1)
                and ((st.st_dev, st.st_ino) == (dev, ino) or _inodes_do_not_last(fd)))
        if not same:
            return [REPLACED]
        return _apply_through(fd, node)
    finally:
        os.close(fd)


#: statfs f_type of file systems whose inode numbers may change while a restore runs (an inode evicted and looked
#: up again): FUSE without use_ino (sshfs...), overlayfs across file systems, FAT, exFAT, NTFS-3G (FUSE), CIFS.
_SHIFTING_INODES = {0x65735546, 0x794C7630, 0x4D44, 0x2011BAB0, 0xFE534D42, 0xFF534D42}


def _inodes_do_not_last(fd: int) -> bool:
    """Whether the file system of the entry open as ``fd`` is one of _SHIFTING_INODES (True when unknown: the
    owner check still holds)."""
    try:
        import ctypes

        buf = ctypes.create_string_buffer(256)
        if ctypes.CDLL(None, use_errno=True).fstatfs(fd, buf) != 0:
            return True
        return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF in _SHIFTING_INODES
    except (OSError, AttributeError):
        return True


def _apply_through(fd: int, node: Node) -> list[str]:
    """``apply_metadata_at``'s work on the entry open as the O_PATH descriptor ``fd``: each call is made on
    /proc/self/fd/N, which leads to that very inode (a symlink's own, not its target's)."""
    path = b"/proc/self/fd/%d" % fd
    return _set_metadata(node, lambda uid, gid: os.chown(path, uid, gid),
                         lambda: apply_xattrs(path, node.xattrs, follow=True)[0],
                         lambda mode: os.chmod(path, mode), lambda: os.fstat(fd),
                         lambda ns: os.utime(path, ns=ns))


def _apply_by_name(dir_fd: int, name: bytes, node: Node) -> list[str]:
    """``apply_metadata_at`` without /proc or O_PATH: by name, never following a symlink."""
    at = {"dir_fd": dir_fd, "follow_symlinks": False}
    return _set_metadata(node, lambda uid, gid: os.chown(name, uid, gid, **at),
                         lambda: apply_xattrs(entry_path(dir_fd, name), node.xattrs)[0],
                         lambda mode: chmod_nofollow(dir_fd, name, mode), lambda: os.stat(name, **at),
                         lambda ns: os.utime(name, ns=ns, **at))


def _set_metadata(node: Node, chown, xattrs, chmod, stat_fn, utime) -> list[str]:
    """Owner (as root; else a setgid entry's group when this user may), extended attributes (after the owner: a
    chown clears file capabilities; before the mode: a read-only mode would keep the owner from setting user.*
    ones), mode (not a symlink's) and mtime of a directory, symlink or special file, through the given calls;
    problems returned, not raised."""
    problems = []
    if IS_ROOT:
        try:
            chown(node.uid, node.gid)
        except OSError as exc:
            problems.append(f"chown: {exc.strerror}")
        except OverflowError:
            problems.append(f"chown: owner {node.uid}:{node.gid} is out of this system's range")
    elif node.type != SYMLINK and node.mode & stat.S_ISGID:
        _own_group(lambda: chown(-1, node.gid))
    problems += xattrs()
    if node.type != SYMLINK:
        try:
            chmod(node.mode)
            _check_set_ids(stat_fn, node, problems)
        except OSError as exc:
            problems.append(f"chmod: {exc.strerror}")
    try:
        utime((node.mtime_ns, node.mtime_ns))
    except OSError as exc:
        if not (node.type == SYMLINK and exc.errno in (errno.ENOTSUP, errno.EPERM)):
            problems.append(f"utime: {exc.strerror}")
    return problems


def _own_group(chgrp) -> None:
    """Without root: give a setgid entry the snapshot's group when this user may (a member of it), so the chmod
    keeps the bit (the kernel clears S_ISGID for a group that is not the user's: the group a setgid directory
    in the target handed down)."""
    try:
        chgrp()
    except (OSError, OverflowError):
        pass


def _check_set_ids(stat_fn, node: Node, problems: list[str], mode: int | None = None) -> None:
    """Say so when the kernel dropped a setuid/setgid bit the snapshot has (not root: the group is not ours),
    or kept setgid but for another group than the snapshot's (this user's own: not a member of that one).
    ``mode``: the mode set, when vault itself left a bit out (said already)."""
    wanted = (node.mode if mode is None else mode) & (stat.S_ISUID | stat.S_ISGID)
    if not wanted or IS_ROOT:
        return
    st = stat_fn()
    if stat.S_IMODE(st.st_mode) & wanted != wanted:
        problems.append("setuid/setgid bit not kept: the file's group is not one of this user's")
    elif node.mode & stat.S_ISGID and st.st_gid != node.gid:
        problems.append(f"setgid bit kept for group {st.st_gid}, not the snapshot's {node.gid} (this user is not "
                        "a member of it)")


def chmod_nofollow(dir_fd: int, name: bytes, mode: int) -> None:
    """chmod without following a symlink (Linux has no lchmod): through /proc/self/fd of an O_PATH descriptor
    of exactly that entry (a symlink there is left alone). Without /proc or O_PATH, by name: then a symlink
    swapped in at that name in between would be followed (restore's directories and special files)."""
    o_path = getattr(os, "O_PATH", 0)
    if not o_path:
        os.chmod(name, mode, dir_fd=dir_fd)
        return
    fd = os.open(name, o_path | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        except FileNotFoundError:  # no /proc
            os.chmod(name, mode, dir_fd=dir_fd)
    finally:
        os.close(fd)


def username() -> str:
    """The name of the user this process runs as (recorded in snapshots, locks and key slots; the uid when the
    system has no name for it). From the user database, not ``$USER``: the same name in all three."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())


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


def make_special(dir_fd: int, name: bytes, node: Node) -> None:
    """Create a fifo or device node (devices need root) in the directory open as ``dir_fd``; sockets are not
    recreated."""
    if node.type == FIFO:
        os.mkfifo(name, 0o600, dir_fd=dir_fd)
    elif node.type in (CHARDEV, BLOCKDEV):
        kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
        os.mknod(name, 0o600 | kind, node.rdev, dir_fd=dir_fd)
    elif node.type == SOCKET:
        raise OSError(errno.ENOTSUP, "sockets are not restored")


__all__ = ["REPLACED", "TYPE_OF", "read_xattrs", "apply_xattrs", "entry_path", "node_from_stat", "stat_key", "apply_metadata", "apply_metadata_at", "chmod_nofollow", "current_umask", "make_special", "node_type", "IS_ROOT", "DIR",
           "SOCKET"]


# --- names a file system takes for one another (FAT, exFAT, SMB, ext4 casefold: case-insensitive) ---------
def fold_key(name: bytes) -> str:
    """A name as a case-insensitive, normalizing file system may compare it (Unicode NFC and case folding;
    ASCII: lower case, the same thing): names of one directory with the same key may be one name there. Always
    text: 'k' and KELVIN SIGN fold together, so an ASCII name must compare with a non-ASCII one."""
    if name.isascii():
        return name.decode("ascii").lower()
    import unicodedata

    return unicodedata.normalize("NFC", name.decode("utf-8", "surrogateescape").casefold())


def folding_names(names: list[bytes]) -> set[bytes]:
    """The names among ``names`` (one directory's) that share a ``fold_key`` with another: usually none."""
    if b"".join(names).isascii() and len({n.lower() for n in names}) == len(names):
        return set()  # (the common case, in C: no two ASCII names differ only in case)
    keys = [fold_key(n) for n in names]
    if len(set(keys)) == len(keys):
        return set()
    seen: dict = {}
    for n, k in zip(names, keys):
        seen.setdefault(k, []).append(n)
    return {n for group in seen.values() if len(group) > 1 for n in group}


_RENAME_NOREPLACE = 1
_renameat2 = None


def rename_noreplace(src_dir_fd: int, src: bytes, dst_dir_fd: int, dst: bytes) -> None:
    """rename(2) that fails with EEXIST when ``dst`` exists -- as the file system compares names (renameat2
    RENAME_NOREPLACE). OSError(ENOSYS) where there is no renameat2, EINVAL where the file system lacks the flag."""
    import ctypes  # (only here: restores onto a case-insensitive file system)

    global _renameat2
    if _renameat2 is None:
        fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", False)
        if fn:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        _renameat2 = fn
    if not _renameat2:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if _renameat2(src_dir_fd, src, dst_dir_fd, dst, _RENAME_NOREPLACE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
