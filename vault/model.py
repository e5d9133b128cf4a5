"""Snapshot / Tree / Node and their canonical serialisation. Knows no storage. Pure.

Names and symlink targets are bytes (any bytes but '/' and NUL). In JSON a name that is valid UTF-8 is
stored as ``"name"``; any other as ``"name_b64"`` (likewise ``target``/``target_b64``). Decoding
validates everything: hostile trees (``..``, ``/`` in names, duplicates, bad ids) are rejected.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .errors import IntegrityError
from .ids import ID_LEN
from .timespec import format_time  # noqa: F401  (snapshot times: the one formatter, re-exported)

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = "file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket"
NODE_TYPES = (FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET)
FORMAT_VERSION = 1
DEEPEST = 9_000  # directory levels backup and repair walk down (by recursion: Python 3.11 shares its recursion
#                 limit with C code such as the JSON decoder, so a much higher limit would let hostile JSON
#                 overflow the C stack -- a crash, not an error)


def _enc_bytes(d: dict, key: str, value: bytes) -> None:
    try:
        d[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        d[key + "_b64"] = base64.b64encode(value).decode("ascii")


def _dec_bytes(d: dict, key: str) -> bytes | None:
    if key in d:
        v = d[key]
        if not isinstance(v, str):
            raise IntegrityError(f"tree: {key} is not a string")
        return v.encode("utf-8", "surrogatepass")
    if key + "_b64" in d:
        try:
            return base64.b64decode(d[key + "_b64"], validate=True)
        except (ValueError, TypeError):
            raise IntegrityError(f"tree: bad base64 in {key}") from None
    return None


def valid_name(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


@dataclass(slots=True)
class Node:
    """One directory entry with its metadata; for a file, its ordered block ids."""

    name: bytes
    type: str
    mode: int = 0  # permission bits incl. setuid/setgid/sticky (stat.S_IMODE)
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    dev: int = 0
    nlink: int = 1
    blocks: list[bytes] = field(default_factory=list)
    subtree: bytes | None = None
    target: bytes | None = None
    rdev: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] | None = None  # extended attributes (ACLs, capabilities), by name


    def to_json(self) -> dict:
        d: dict = {}
        _enc_bytes(d, "name", self.name)
        d.update(type=self.type, mode=self.mode, uid=self.uid, gid=self.gid, mtime_ns=self.mtime_ns,
                 ctime_ns=self.ctime_ns, inode=self.inode, dev=self.dev, nlink=self.nlink)
        if self.type == FILE:
            d["size"] = self.size
            d["blocks"] = [b.hex() for b in self.blocks]
        elif self.type == DIR:
            d["subtree"] = self.subtree.hex() if self.subtree else None
        elif self.type == SYMLINK:
            _enc_bytes(d, "target", self.target or b"")
        elif self.type in (CHARDEV, BLOCKDEV):
            d["rdev"] = self.rdev
        if self.xattrs:
            d["xattrs"] = [_enc_xattr(k, v) for k, v in sorted(self.xattrs)]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Node":
        if not isinstance(d, dict):
            raise IntegrityError("tree: node is not an object")
        name = _dec_bytes(d, "name")
        if name is None or not valid_name(name):
            raise IntegrityError(f"tree: invalid entry name {name!r}"[:120])
        g = d.get
        t = g("type")
        if t not in NODE_TYPES:
            raise IntegrityError(f"tree: unknown node type {t!r}"[:80])
        mode, uid, gid, size, inode, dev = g("mode", 0), g("uid", 0), g("gid", 0), g("size", 0), g("inode", 0), g("dev", 0)
        mtime, ctime, nlink, rdev = g("mtime_ns", 0), g("ctime_ns", 0), g("nlink", 0), g("rdev", 0)
        # one expression instead of ten calls (trees are decoded by the hundred thousand): every field an int
        # (not a bool) within its range; when not, _int finds the culprit for the message
        if not (type(mode) is int and 0 <= mode <= 0o7777 and type(uid) is int and 0 <= uid <= _U64
                and type(gid) is int and 0 <= gid <= _U64 and type(size) is int and 0 <= size <= _U64
                and type(inode) is int and 0 <= inode <= _U64 and type(dev) is int and 0 <= dev <= _U64
                and type(mtime) is int and _I64_MIN <= mtime <= _I64_MAX
                and type(ctime) is int and _I64_MIN <= ctime <= _I64_MAX
                and type(nlink) is int and 0 <= nlink <= 1 << 32 and type(rdev) is int and 0 <= rdev <= _U64):
            for key, lo, hi in _RANGES:
                _int(d, key, lo, hi)
        n = cls(name=name, type=t, mode=mode, uid=uid, gid=gid, size=size, mtime_ns=mtime, ctime_ns=ctime,
                inode=inode, dev=dev, nlink=nlink or 1, rdev=rdev)
        if t == FILE:
            n.blocks = parse_ids(g("blocks", []))
        elif t == DIR:
            sub = g("subtree")
            n.subtree = parse_id(sub) if sub is not None else None
        elif t == SYMLINK:
            n.target = _dec_bytes(d, "target") or b""
            if b"\0" in n.target:
                raise IntegrityError("tree: NUL in symlink target")
        if "xattrs" in d:
            n.xattrs = parse_xattrs(d["xattrs"])
        return n


_U64, _I64_MIN, _I64_MAX = (1 << 64) - 1, -(1 << 63), (1 << 63) - 1
_RANGES = (("mode", 0, 0o7777), ("uid", 0, _U64), ("gid", 0, _U64), ("size", 0, _U64), ("inode", 0, _U64),
           ("dev", 0, _U64), ("mtime_ns", _I64_MIN, _I64_MAX), ("ctime_ns", _I64_MIN, _I64_MAX),
           ("nlink", 0, 1 << 32), ("rdev", 0, _U64))


XATTR_MAX_TOTAL = 1 << 20  # bytes of names and values one entry may hold (Linux: at most 64 KiB a value)
XATTR_MAX_NAME = 255


def _enc_xattr(name: bytes, value: bytes) -> dict:
    d: dict = {}
    _enc_bytes(d, "name", name)
    d["value"] = base64.b64encode(value).decode("ascii")
    return d


def parse_xattrs(items: object) -> tuple[tuple[bytes, bytes], ...] | None:
    """A node's extended attributes: a list of {"name" | "name_b64", "value" (base64)}, names unique, non-empty,
    without NUL, at most 255 bytes, all of them at most XATTR_MAX_TOTAL bytes (a hostile tree cannot make
    restore set megabytes per file or a name the kernel would misread)."""
    if type(items) is not list:
        raise IntegrityError("tree: xattrs is not a list")
    out, total = [], 0
    for it in items:
        if type(it) is not dict:
            raise IntegrityError("tree: extended attribute is not an object")
        name = _dec_bytes(it, "name")
        value = it.get("value")
        if not name or len(name) > XATTR_MAX_NAME or b"\0" in name or type(value) is not str:
            raise IntegrityError("tree: malformed extended attribute")
        if total + len(name) + len(value) * 3 // 4 > XATTR_MAX_TOTAL + 2:  # (before decoding it)
            raise IntegrityError("tree: extended attributes too large")
        try:
            raw = base64.b64decode(value, validate=True)
        except (ValueError, TypeError):
            raise IntegrityError("tree: bad base64 in an extended attribute") from None
        total += len(name) + len(raw)
        out.append((name, raw))
    if total > XATTR_MAX_TOTAL:
        raise IntegrityError("tree: extended attributes too large")
    if len({k for k, _ in out}) != len(out):
        raise IntegrityError("tree: duplicate extended attribute")
    return tuple(sorted(out)) or None


def _int(d: dict, key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    v = d.get(key, 0)
    if type(v) is not int or not lo <= v <= hi:
        raise IntegrityError(f"tree: field {key} out of range")
    return v


def parse_ids(texts: object) -> list[bytes]:
    """A list of ids (64 lowercase hex digits each), checked as a whole: as strict as ``parse_id`` on each,
    at C speed (a file's block list may hold thousands)."""
    if type(texts) is not list:
        raise IntegrityError("tree: blocks is not a list")
    if not texts:
        return []
    try:
        if set(map(type, texts)) != {str} or set(map(len, texts)) != {2 * ID_LEN}:
            raise ValueError
        joined = "".join(texts)
        if joined != joined.lower() or not joined.isalnum():
            raise ValueError
        raw = bytes.fromhex(joined)
    except ValueError:
        raise IntegrityError("tree: id is not 64 lowercase hex digits") from None
    if len(raw) != ID_LEN * len(texts):
        raise IntegrityError("tree: id of wrong length")
    return [raw[i : i + ID_LEN] for i in range(0, len(raw), ID_LEN)]


def parse_id(text: object) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * ID_LEN or text != text.lower() or not text.isalnum():
        raise IntegrityError("tree: id is not 64 lowercase hex digits")
    raw = bytes.fromhex(text)
    if len(raw) != ID_LEN:
        raise IntegrityError("tree: id of wrong length")
    return raw


ENCODE_SLICE = 4096  # nodes encoded at once by Tree.encode
_dump = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # (canonical: sorted keys, no spaces)


@dataclass
class Tree:
    nodes: list[Node] = field(default_factory=list)

    def encode(self) -> bytes:
        """Canonical JSON: nodes sorted by name bytes, sorted keys, no spaces. A wide directory is encoded a
        slice of nodes at a time (the same bytes): the dicts of 200,000 nodes at once took ~1 KB each."""
        nodes = sorted(self.nodes, key=lambda n: n.name)
        pieces = [_dump([n.to_json() for n in nodes[i:i + ENCODE_SLICE]])[1:-1].encode("utf-8")
                  for i in range(0, len(nodes), ENCODE_SLICE)]
        return b'{"nodes":[' + b",".join(pieces) + b'],"v":%d}' % FORMAT_VERSION

    @classmethod
    def decode(cls, data: bytes) -> "Tree":
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise IntegrityError("tree: not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION or not isinstance(doc.get("nodes"), list):
            raise IntegrityError("tree: unsupported format")
        nodes = [Node.from_json(n) for n in doc["nodes"]]
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise IntegrityError("tree: duplicate entry names")
        return cls(nodes)


XATTRS_MARK = "xattrs"  # summary key: the root tree id (hex) of a snapshot whose trees hold every entry's xattrs


def holds_xattrs(snap: "Snapshot") -> bool:
    """Whether ``snap``'s trees hold its entries' extended attributes (backup may then carry an unchanged entry's
    over). The mark names the snapshot's own root tree: a vault that did not store them, copying or repairing the
    snapshot, rebuilt its trees without them but copied the summary as it was -- its mark names another tree."""
    return snap.summary.get(XATTRS_MARK) == snap.tree.hex()


def moved_summary(summary: dict, old_root: bytes, new_root: bytes) -> dict:
    """``summary`` for a snapshot rebuilt (copied, repaired) from one with root ``old_root`` as ``new_root`` by
    code that keeps every extended attribute: the mark follows the tree when the source held them."""
    out = dict(summary)
    if out.get(XATTRS_MARK) == old_root.hex():
        out[XATTRS_MARK] = new_root.hex()
    else:
        out.pop(XATTRS_MARK, None)
    return out


def parse_stored_time(text: str) -> datetime:
    try:
        if isinstance(text, str) and 1 <= text.find("-") < 4:  # a short year: how earlier versions wrote years < 1000
            text = text.zfill(len(text) + 4 - text.find("-"))
        t = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except (ValueError, TypeError):
        raise IntegrityError(f"snapshot: bad time {text!r}"[:80]) from None
    return t.replace(tzinfo=timezone.utc)


def replaced_by_repair(snaps: list["Snapshot"]) -> set[str]:
    """Ids of the snapshots that ``vault repair`` replaced: named by another's ``repaired_from`` *and* of the
    same time, host and paths as it (a manifest cannot hide another snapshot just by naming it)."""
    by_id = {s.id: s for s in snaps}
    out = set()
    for s in snaps:
        old = by_id.get(s.repaired_from or "")
        if old is not None and old is not s and (old.time, old.host, old.paths) == (s.time, s.host, s.paths):
            out.add(old.id)
    return out


def storable_text(value: object) -> str:
    """A manifest's host or user name as storable text: lone surrogates (JSON allows "\\udcff"; an older vault
    wrote them for a host given in bytes that are not UTF-8) become U+FFFD, so the catalog can hold it."""
    s = str(value)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:  # bytes that were not UTF-8 (\udc80-\udcff): one U+FFFD each
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # other lone surrogates
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@dataclass
class Snapshot:
    """The manifest of one backup run. Its id is the SHA-256 of the stored (encrypted) object."""

    time: datetime
    host: str
    paths: list[str]
    tree: bytes
    tags: list[str] = field(default_factory=list)
    username: str = ""
    parent: str | None = None
    summary: dict = field(default_factory=dict)
    id: str = ""  # filled in when stored or loaded

    def encode(self) -> bytes:
        doc = {"v": FORMAT_VERSION, "time": format_time(self.time), "host": self.host, "paths": self.paths,
               "tags": self.tags, "tree": self.tree.hex(), "username": self.username, "parent": self.parent,
               "summary": self.summary}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, snap_id: str) -> "Snapshot":
        try:
            doc = json.loads(data)
            if doc.get("v") != FORMAT_VERSION:
                raise IntegrityError("snapshot: unsupported format version")
            snap = cls(time=parse_stored_time(doc["time"]), host=storable_text(doc["host"]),
                       paths=[str(p) for p in doc["paths"]], tree=parse_id(doc["tree"]),
                       tags=[str(t) for t in doc.get("tags", [])], username=storable_text(doc.get("username", "")),
                       parent=doc.get("parent"), summary=dict(doc.get("summary") or {}), id=snap_id)
            if snap.parent is not None and not (isinstance(snap.parent, str) and len(snap.parent) == 64):
                raise ValueError("bad parent")
            for key in ("copied_from", "copied_from_repo", "origin", "restored_from_copy", "restored_from_catalog",
                        "repaired_from"):
                if key in snap.summary and not isinstance(snap.summary[key], str):
                    del snap.summary[key]  # (a list or dict there made copy and repair fail: unhashable)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError):
            raise IntegrityError(f"snapshot {snap_id[:8]}: malformed manifest") from None
        return snap

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def origin(self) -> str:
        """The id of the snapshot this one is a copy of, however many copies back (``summary.origin``; a copy by
        an older vault records only ``copied_from``, one step back), or its own id."""
        return self.summary.get("origin") or self.summary.get("copied_from") or self.id

    def copy_keys(self) -> set[str]:
        """The ids under which a copy of this snapshot's state may be known in another repository: its own, the
        snapshot it was copied from, its origin, the copy a repair restored it from and the lost manifest a repair
        wrote it again for. Two snapshots sharing
        one hold the same state (``vault copy`` skips it)."""
        keys = {self.id, self.origin}
        for key in ("copied_from", "restored_from_copy", "restored_from_catalog"):
            if isinstance(self.summary.get(key), str):
                keys.add(self.summary[key])
        return keys

    @property
    def repaired_from(self) -> str | None:
        """The snapshot ``vault repair`` wrote this one to replace (``summary.repaired_from``), if well-formed."""
        rid = self.summary.get("repaired_from")
        return rid if isinstance(rid, str) and len(rid) == 64 else None

    def group_key(self) -> tuple[str, tuple[str, ...]]:
        return (self.host, tuple(sorted(self.paths)))
