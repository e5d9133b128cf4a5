"""Read-only commands answered from the catalog: snapshots, ls, find, diff, stats."""

from __future__ import annotations

import os
import stat
import time

import click

from .. import api
from ..jsonshape import node_json, snapshot_json
from ..model import FILE, SYMLINK, format_time
from .common import get_ctx, global_options, human_bytes, local_time, printable, texts
from .main import cli


def _filters(f):
    f = click.option("--path", "paths", multiple=True, help="Only snapshots holding this path (repeated: holding every one).")(f)
    f = click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag (a,b = both).")(f)
    f = click.option("--host", "hosts", multiple=True, help="Only snapshots of this host.")(f)
    return f


@cli.command()
@_filters
@click.option("--latest", type=click.IntRange(1), metavar="N", help="Only the N newest snapshots of each host and "
              "set of paths (as restic's --latest).")
@global_options
def snapshots(hosts, tags, paths, latest) -> None:
    """List snapshots, oldest first.

    Example: vault --repo /srv/backup snapshots --host web1 --json
    """
    c = get_ctx()
    with api.session(c.settings, c.password_fn()) as sess:
        snaps = api.list_snapshots(sess, api.SnapshotFilter(texts(hosts), texts(tags), list(paths)), latest)
    c.warn_unreadable(sess.sync.unreadable, "not listed; run 'vault verify'")
    if c.json:
        c.emit_json_stream(None, (snapshot_json(s) for s in snaps))  # (built whole: 86 MiB at 5,800)
        return
    times = [local_time(s.time) for s in snaps]
    width = max(map(len, times), default=0)  # (wider with an offset: see local_time)
    for s, when in zip(snaps, times):  # host, tags and paths come from the repository: no control characters
        c.out(f"{s.short_id}  {when:<{width}}  {printable(s.host):<16} "
              f"{printable(','.join(s.tags)) or '-':<12} {printable(' '.join(s.paths))}")
    c.out(f"{len(snaps)} snapshot(s)")


_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "chardev": stat.S_IFCHR,
              "blockdev": stat.S_IFBLK, "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK}


def _line(path: bytes, n) -> str:
    """``ls -l``: mode, owner and group ids, size, mtime (local time, to the second), path (as restic's)."""
    mode = stat.filemode(n.mode | _TYPE_BITS.get(n.type, 0))
    size = n.size if n.type == FILE else 0
    tail = f" -> {printable(os.fsdecode(n.target))}" if n.type == SYMLINK and n.target is not None else ""
    try:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(n.mtime_ns // 1_000_000_000))
    except (OverflowError, OSError, ValueError):  # (a time out of the platform's range)
        when = "????-??-?? ??:??:??"
    return f"{mode} {n.uid:>5} {n.gid:>5} {size:>12} {when} {printable(os.fsdecode(path))}{tail}"


@cli.command()
@click.argument("snapshot")
@click.argument("path", required=False)
@click.option("-l", "--long", "long_", is_flag=True, help="Show mode and size.")
@global_options
def ls(snapshot: str, path: str | None, long_: bool) -> None:
    """List every entry of SNAPSHOT below PATH (default: all), recursively.

    Example: vault --repo /srv/backup ls latest /etc
    """
    c = get_ctx()
    with api.session(c.settings, c.password_fn(), lock="shared", operation="ls") as sess:
        snap = api.find_snapshot(sess, snapshot)
        c.warn_unreadable(api.passed_over(sess, snapshot, chosen=snap),
                          f"'latest' is {snap.short_id}, the newest of the others")
        entries = api.ls(sess, snap, path)  # streamed: a snapshot of millions of files is never held whole
        if c.json:
            c.emit_json_stream({"snapshot_id": snap.id}, (node_json(p, n) for p, n in entries), sess.requests)
            return
        c.out_lines(_line(p, n) if long_ else printable(os.fsdecode(p)) for p, n in entries)  # (--json: exact)


@cli.command()
@click.argument("pattern")
@click.option("-i", "--ignore-case", is_flag=True, help="Ignore case in PATTERN and in the names (restic's).")
@_filters
@global_options
def find(pattern: str, ignore_case: bool, hosts, tags, paths) -> None:
    """Find paths matching a GLOB in every snapshot (a GLOB without '/' matches names at any depth).

    Example: vault --repo /srv/backup find '*.conf'
    """
    c = get_ctx()
    with api.session(c.settings, c.password_fn(), lock="shared", operation="find") as sess:
        hits = api.find(sess, pattern, api.SnapshotFilter(texts(hosts), texts(tags), list(paths)),  # streamed
                        ignore_case=ignore_case)
        c.warn_unreadable(sess.sync.unreadable, "not searched; run 'vault verify'")
        if c.json:
            c.emit_json_stream(None, ({"snapshot_id": s.id, "short_id": s.short_id, "time": format_time(s.time),
                                       **node_json(p, n)} for s, p, n in hits))
            return
        heads: dict[str, str] = {}  # (each snapshot's id and time, formatted once, not once per line)
        c.out_lines(f"{heads.get(s.id) or heads.setdefault(s.id, f'{s.short_id}  {local_time(s.time)}  ')}"
                    f"{printable(os.fsdecode(p))}" for s, p, n in hits)


@cli.command()
@click.argument("snapshot_a")
@click.argument("snapshot_b")
@global_options
def diff(snapshot_a: str, snapshot_b: str) -> None:
    """Show what was added (+), removed (-) and modified (M) from SNAPSHOT_A to SNAPSHOT_B.

    Example: vault --repo /srv/backup diff 1a2b3c4d latest
    """
    c = get_ctx()
    with api.session(c.settings, c.password_fn(), lock="shared", operation="diff") as sess:
        a, b = api.find_snapshot(sess, snapshot_a), api.find_snapshot(sess, snapshot_b)
        if "latest" in (snapshot_a, snapshot_b):
            c.warn_unreadable(api.passed_over(sess, "latest"), "'latest' chose among the others")
        res = api.diff(sess, a, b)
        requests = sess.requests()
    if c.json:
        c.emit_json({"snapshot_a": a.id, "snapshot_b": b.id, **res.to_json(), **requests})
        return
    for sign, items in (("+", res.added), ("-", res.removed), ("M", res.modified)):
        for p in items:
            c.out(f"{sign} {printable(str(p))}")
    c.out(f"{len(res.added)} added, {len(res.removed)} removed, {len(res.modified)} modified")


@cli.command()
@global_options
def stats() -> None:
    """Show repository statistics: snapshots, packs, blocks, bytes stored, dedup ratio.

    Example: vault --repo /srv/backup stats --json
    """
    c = get_ctx()
    with api.session(c.settings, c.password_fn()) as sess:
        d = api.stats(sess)
        d.update(sess.requests())
    if c.json:
        c.emit_json(d)
        return
    c.out(f"snapshots:        {d['snapshots']} (holding {human_bytes(d['snapshots_bytes'])})"
          f"\npacks:            {d['packs']} ({human_bytes(d['pack_bytes'])})"
          f"\nblocks:           {d['blocks']}\ndata (raw):       {human_bytes(d['raw_bytes'])}"
          f"\nstored:           {human_bytes(d['stored_bytes'])}\nrepository size:  {human_bytes(d['repository_bytes'])} in {d['repository_objects']} objects"
          f"\ncompression ratio:       {'-' if d['compression_ratio'] is None else d['compression_ratio']}"
          f"\ndedup+compression ratio: {'-' if d['dedup_ratio'] is None else d['dedup_ratio']}")
