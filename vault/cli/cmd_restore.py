"""``vault restore``."""

from __future__ import annotations

import io
import os
import sys

import click

from .. import api
from ..dumper import writing
from ..errors import UsageError, VaultError
from ..excludes import compile_glob
from ..restorer import RestoreOptions
from .common import get_ctx, global_options, human_bytes, printable, texts
from .progress import RestoreProgress
from .main import cli


def _target(ctx, param, value: str) -> str:
    if not value:
        raise click.BadParameter("must name a directory (an empty path is not the current one)")
    return value


@cli.command()
@click.argument("snapshot", required=False)
@click.option("-t", "--target", required=True, metavar="DIR", callback=_target,
              help="Directory to restore into.")
@click.option("--at", "at", metavar="TIME", help="Instead of SNAPSHOT: the newest snapshot taken at or before "
              "TIME: ISO-8601, 'N days ago', or a day and/or a time of day ('last tuesday 10:00', "
              "'yesterday 18:00', '14:30').")
@click.option("-i", "--include", "includes", multiple=True, metavar="GLOB", help="Restore only matching paths.")
@click.option("-e", "--exclude", "excludes", multiple=True, metavar="GLOB", help="Do not restore matching paths.")
@click.option("--iinclude", "iincludes", multiple=True, metavar="GLOB", help="As --include, ignoring case.")
@click.option("--iexclude", "iexcludes", multiple=True, metavar="GLOB", help="As --exclude, ignoring case.")
@click.option("--host", "hosts", multiple=True, help="With latest/--at: only snapshots of this host.")
@click.option("--tag", "tags", multiple=True, help="With latest/--at: only snapshots with this tag.")
@click.option("--path", "paths", multiple=True, help="With latest/--at: only snapshots of this path.")
@global_options
def restore(snapshot: str | None, target: str, at: str | None, includes: tuple[str, ...], excludes: tuple[str, ...],
            iincludes: tuple[str, ...], iexcludes: tuple[str, ...],
            hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...]) -> int:
    """Restore SNAPSHOT (id, prefix or 'latest') or the state --at TIME into --target; SNAPSHOT:PATH restores
    that directory's content into --target itself.

    Every block is checked against its hash. A file with damaged or missing data is named and not left
    behind; everything else is restored; exit 20.

    Example: vault --repo /srv/backup restore --at 'last tuesday 10:00' --target /tmp/r --include /etc
    """
    c = get_ctx()
    if snapshot and at:
        raise UsageError("give either SNAPSHOT or --at TIME, not both")
    if not snapshot and not at:
        raise UsageError("name a snapshot (id, prefix or 'latest') or use --at TIME")
    flt = api.SnapshotFilter(texts(hosts), texts(tags), list(paths))
    progress = RestoreProgress(enabled=not (c.quiet or c.json))
    try:
        snap, res = api.restore(c.settings, c.password_fn(), snapshot, RestoreOptions(
            target, [*includes, *(compile_glob(p, fold=True) for p in iincludes)],
            [*excludes, *(compile_glob(p, fold=True) for p in iexcludes)], progress=progress), at=at, flt=flt)
    finally:
        progress.done()
    c.warn_unreadable(res.passed_over, f"it may be newer than {snap.short_id}, the snapshot restored", always=True)
    original, dropped = snap.repaired_from, snap.summary.get("files_dropped")
    if isinstance(original, str):  # (latest and --at prefer repair's replacement: it lacks what was lost)
        c.err(printable(f"vault: warning: snapshot {snap.short_id} is vault repair's replacement of {original[:8]}"
                        + (f", without {dropped} file(s) lost then" if isinstance(dropped, int) else "")
                        + f": restore {original[:8]} to have them named (or restored, if their data was stored "
                          "again since)"))
    if (includes or iincludes) and not (res.files or res.dirs or res.symlinks or res.other or res.damaged
                                        or res.errors):
        also = " that --exclude leaves in" if excludes or iexcludes else ""
        c.err(printable(f"vault: warning: nothing in snapshot {snap.short_id} matches --include "
                        f"{' '.join((*includes, *iincludes))}{also} (its paths: {' '.join(snap.paths)})"))
    for path, why in res.damaged:
        c.err(printable(f"damaged: {path}: {why}"))
    for path, why in res.errors:
        c.err(printable(f"error: {path}: {why}"))
    if c.verbose:
        for path, why in res.warnings:
            c.err(printable(f"warning: {path}: {why}"))
    elif res.warnings and not c.quiet and not c.json:  # (a setuid/setgid bit not kept as it was matters)
        setids = sum(1 for _, why in res.warnings if "setuid" in why or "setgid" in why)
        c.err(f"vault: {len(res.warnings)} warning(s) about metadata not restored as it was"
              + (f", {setids} of them about setuid/setgid bits" if setids else "") + " (-v lists them)")
    if c.json:
        c.emit_json({"snapshot_id": snap.id, "target": target, "files": res.files, "dirs": res.dirs,
                     "symlinks": res.symlinks, "other": res.other, "bytes_written": res.bytes_written,
                     "damaged": [{"path": p, "problem": w} for p, w in res.damaged],
                     "errors": [{"path": p, "error": w} for p, w in res.errors],
                     "warnings": [{"path": p, "warning": w} for p, w in res.warnings],
                     **({"catalog_problem": res.catalog_problem} if res.catalog_problem else {}),
                     **({"repaired_from": original} if isinstance(original, str) else {}),
                     **({"unreadable_snapshots": sorted(res.passed_over)} if res.passed_over else {}), **res.requests})
    else:
        c.out(f"restored snapshot {snap.short_id} to {printable(str(target))}: {res.files} files, {res.dirs} dirs, "
              f"{res.symlinks} symlinks, " + (f"{res.other} other (fifos, devices), " if res.other else "")
              + human_bytes(res.bytes_written) + " written")  # (runs of zeros left as holes are not counted)
    if res.damaged and res.catalog_problem:  # not the repository's damage: an error, exit 1
        c.err(f"vault: {len(res.damaged)} file(s) not restored; {res.catalog_problem}")
        return 1
    if res.damaged:
        lost_dirs = sum(1 for _, why in res.damaged if why.startswith("directory listing lost"))
        c.err(f"vault: {len(res.damaged) - lost_dirs} file(s)"
              + (f" and everything below {lost_dirs} directory(ies)" if lost_dirs else "")
              + " not restored because their data is damaged or missing")
        return 20
    if res.passed_over:  # damage in the repository that may have changed which snapshot was restored
        return 20
    if res.errors:
        return 1
    return 0


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="[SNAPSHOT] PATH")
@click.option("--at", "at", metavar="TIME", help="Instead of SNAPSHOT: the newest snapshot taken at or before "
              "TIME: ISO-8601, 'N days ago', or a day and/or a time of day ('last tuesday 10:00', "
              "'yesterday 18:00', '14:30').")
@click.option("--host", "hosts", multiple=True, help="With latest/--at: only snapshots of this host.")
@click.option("--tag", "tags", multiple=True, help="With latest/--at: only snapshots with this tag.")
@click.option("--path", "paths", multiple=True, help="With latest/--at: only snapshots of this path.")
@global_options
def dump(args: tuple[str, ...], at: str | None, hosts: tuple[str, ...], tags: tuple[str, ...],
         paths: tuple[str, ...]) -> int:
    """Write PATH of SNAPSHOT (id, prefix or 'latest') or of the state --at TIME to stdout: a file's content
    as it was, anything else (a directory; / for the whole snapshot) as a tar stream.

    Every block is checked against its hash; damaged or missing data stops the dump, names the file and exits 20
    (what was written before it is cut short, never wrong).

    Example: vault --repo /srv/backup dump --at '2 days ago' /etc/nginx/nginx.conf > nginx.conf
    """
    c = get_ctx()
    if at and len(args) != 1:
        raise UsageError("with --at TIME give only PATH" if len(args) > 1 else "name a PATH")
    if not at and len(args) != 2:
        raise UsageError("give SNAPSHOT (id, prefix or 'latest') and PATH, or --at TIME and PATH")
    if c.json:
        raise UsageError("dump writes the data itself to stdout: --json does not apply")
    spec, path = (None, args[0]) if at else args
    if not path:
        raise UsageError("PATH is empty: name a path in the snapshot ('/' for all of it)")
    if sys.stdout is None:  # (started with it closed: the data would go nowhere, and exit 0 would say it went)
        raise VaultError("dump writes to standard output, which is closed: redirect it (vault dump ... > FILE)")
    out = sys.stdout.buffer
    if not isinstance(out, io.BufferedIOBase):  # (PYTHONUNBUFFERED, python -u: a raw FileIO, whose write may take
        # part of the bytes and say so only by its count -- a full disk cut the dump short with exit 0; a
        # BufferedWriter raises instead. Over a copy of the descriptor: closing it must not close stdout)
        out = io.BufferedWriter(io.FileIO(os.dup(out.fileno()), "wb"), 1 << 20)
    snap, dumper, passed = api.dump(c.settings, c.password_fn(), spec, path, out, at=at,
                                    flt=api.SnapshotFilter(texts(hosts), texts(tags), list(paths)),
                                    warn=lambda m: c.err(printable(f"vault: warning: {m}")))
    with writing():
        out.flush()
    c.warn_unreadable(passed, f"it may be newer than {snap.short_id}, the snapshot dumped", always=True)
    if c.verbose:
        c.err(f"dumped {dumper.entries} entr{'y' if dumper.entries == 1 else 'ies'} of snapshot {snap.short_id}, "
              f"{human_bytes(dumper.bytes_written)}")
    return 20 if passed else 0
