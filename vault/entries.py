"""The catalog's form of a tree: its entries as plain tuples, sealed with a keyed MAC. Pure; knows no storage.

A tree's canonical form is JSON (``model.Tree.encode``): portable, and what the tree id authenticates. Parsing it
is slow (~50 MB/s: an unchanged re-run of 55k files spent a third of its time in ``json.loads``), so the catalog
caches each tree it has validated once as ``marshal`` data instead, which loads ~10x faster:

    entry  = (name, key, extra, xattrs)
    key    = (type, mode, uid, gid, size, mtime_ns, ctime_ns, inode, dev, nlink, rdev)   # what stat gives
    extra  = the block ids joined (file) | subtree id or None (dir) | target (symlink) | None
    xattrs = ((name, value), ...) sorted by name | None

``key`` is exactly what ``fsmeta.stat_key`` builds from ``lstat``, so a backup compares an entry with one tuple
comparison. The sealed form is ``tag || marshal(list of entries)``, ``tag = BLAKE2b-256(key=K, tree id ||
payload)`` with ``K`` derived from the repository's MAC key: a cache that was damaged, tampered with without the
key, or moved to another tree id is detected, and ``marshal`` only ever reads bytes this code wrote.
"""

from __future__ import annotations

import hashlib
import hmac
import marshal

from .errors import IntegrityError
from .ids import ID_LEN
from .model import DIR, FILE, SYMLINK, Node

_TAG = 32
_PERSON = b"vault-entries-2"  # the layout above, version 2 (1: no xattrs; its rows fail the tag: fetched again)


def cache_key(mac_key: bytes) -> bytes:
    """The catalog's sealing key: derived from (never equal to) the key that makes block and tree ids -- with
    another function than ids are made with. (It was HMAC-SHA256(mac_key, a label): the id of a file holding
    that label, which a catalog lists in the clear; whoever got such a file into a backed-up tree could seal
    rows of their own. See ``legacy_cache_key``.)"""
    return hashlib.blake2b(b"catalog sealing key", key=mac_key, digest_size=32, person=b"vault-cachekey-2").digest()


def legacy_cache_key(mac_key: bytes) -> bytes:
    """The sealing key of vault before 0.1.1 (forgeable, see ``cache_key``): a row sealed with it counts as
    unsealed -- a tree is read again from the repository, a snapshot row as one an earlier vault wrote."""
    return hmac.digest(mac_key, b"vault catalog tree entries v1", "sha256")


def entry(n: Node) -> tuple:
    if n.type == FILE:
        extra: bytes | None = b"".join(n.blocks)
    elif n.type == DIR:
        extra = n.subtree
    elif n.type == SYMLINK:
        extra = n.target
    else:
        extra = None
    return (n.name, (n.type, n.mode, n.uid, n.gid, n.size, n.mtime_ns, n.ctime_ns, n.inode, n.dev, n.nlink, n.rdev),
            extra, n.xattrs)


def node(e: tuple) -> Node:
    name, (t, mode, uid, gid, size, mtime, ctime, inode, dev, nlink, rdev), extra, xattrs = e
    n = Node(name, t, mode, uid, gid, size, mtime, ctime, inode, dev, nlink, rdev=rdev, xattrs=xattrs)
    if t == FILE:
        n.blocks = split_ids(extra)
    elif t == DIR:
        n.subtree = extra
    elif t == SYMLINK:
        n.target = extra
    return n


def split_ids(joined: bytes) -> list[bytes]:
    return [joined[i : i + ID_LEN] for i in range(0, len(joined), ID_LEN)]


def _tag(key: bytes, tree_id: bytes, payload: bytes) -> bytes:
    h = hashlib.blake2b(tree_id, key=key, digest_size=_TAG, person=_PERSON)
    h.update(payload)
    return h.digest()


def seal(key: bytes, tree_id: bytes, nodes: list[Node]) -> bytes:
    payload = marshal.dumps([entry(n) for n in nodes])
    return _tag(key, tree_id, payload) + payload


def unseal(key: bytes, tree_id: bytes, sealed: bytes) -> list[tuple]:
    """The entries, or IntegrityError when the tag does not match (damaged, tampered, another tree's)."""
    if type(sealed) is not bytes or len(sealed) <= _TAG:  # (a damaged row may even hold another SQLite type)
        raise IntegrityError(f"cached tree {tree_id.hex()[:16]}: malformed")
    payload = memoryview(sealed)[_TAG:]
    if not hmac.compare_digest(_tag(key, tree_id, payload), sealed[:_TAG]):
        raise IntegrityError(f"cached tree {tree_id.hex()[:16]}: bad tag")
    try:
        entries = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):  # e.g. written by another Python's marshal: fetch it again
        raise IntegrityError(f"cached tree {tree_id.hex()[:16]}: unreadable") from None
    if type(entries) is not list:
        raise IntegrityError(f"cached tree {tree_id.hex()[:16]}: unreadable")
    return entries


__all__ = ["cache_key", "legacy_cache_key", "entry", "node", "seal", "unseal", "split_ids"]
