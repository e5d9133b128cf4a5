"""The ``--json`` shapes shared by several commands: a snapshot, a tree entry, and the base64 twin of every
path that is not UTF-8 (pure: no I/O)."""

from __future__ import annotations

import base64
import os

from .model import FILE, Node, Snapshot, format_time

_PATH_KEYS = frozenset({"path"})  # a path; and lists of paths:
_PATHS_KEYS = frozenset({"files", "added", "removed", "modified", "files_dropped", "paths"})


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # (surrogate escapes: bytes that are not UTF-8)
        return False
    return True


def with_b64(doc: object) -> object:
    """``doc`` with, next to each path that is not UTF-8 (a ``"path"``, or a list under ``"files"``,
    ``"added"``...), its exact bytes in base64: ``"path_b64"``, or ``"files_b64"`` (the whole list, in order) --
    as ``ls --json`` gives ``path_b64``. jq, Go and JavaScript turn the ``\\udcXX`` escapes into U+FFFD: a
    damaged file named so could not be found by a script."""
    if isinstance(doc, list):
        return [with_b64(d) for d in doc]
    if not isinstance(doc, dict):
        return doc
    out = {}
    for k, v in doc.items():
        out[k] = with_b64(v) if isinstance(v, (dict, list)) else v
        if k in _PATH_KEYS and isinstance(v, str) and not _utf8(v) and f"{k}_b64" not in doc:
            out[f"{k}_b64"] = base64.b64encode(os.fsencode(v)).decode("ascii")
        elif (k in _PATHS_KEYS and isinstance(v, list) and f"{k}_b64" not in doc
              and any(isinstance(p, str) and not _utf8(p) for p in v)):
            out[f"{k}_b64"] = [base64.b64encode(os.fsencode(p)).decode("ascii") if isinstance(p, str) else None
                               for p in v]
    return out


def node_json(path: bytes, n: Node) -> dict:
    d = {"path": os.fsdecode(path), "type": n.type, "mode": n.mode, "mtime_ns": n.mtime_ns, "uid": n.uid,
         "gid": n.gid}
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        d["path_b64"] = base64.b64encode(path).decode("ascii")  # the exact bytes of a non-UTF-8 name
    if n.type == FILE:
        d["size"] = n.size
    if n.xattrs:  # (names only: what is stored, e.g. security.capability or system.posix_acl_access)
        d["xattrs"] = [os.fsdecode(k) for k, _ in n.xattrs]
    if n.target is not None:
        d["target"] = os.fsdecode(n.target)
        try:
            n.target.decode("utf-8")
        except UnicodeDecodeError:
            d["target_b64"] = base64.b64encode(n.target).decode("ascii")  # the exact bytes of the link
    return d


def snapshot_json(s: Snapshot) -> dict:
    d = {"id": s.id, "short_id": s.short_id, "time": format_time(s.time), "host": s.host, "paths": s.paths,
         "tags": s.tags, "username": s.username, "parent": s.parent, "tree": s.tree.hex(), "summary": s.summary}
    return d if all(p.isascii() for p in s.paths) else with_b64(d)  # (a path that is not UTF-8: its bytes too)
