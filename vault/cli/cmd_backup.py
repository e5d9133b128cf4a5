"""``vault init`` and ``vault backup``."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from .. import api
from ..archiver import BackupOptions
from ..errors import UsageError
from ..excludes import read_exclude_file
from ..timespec import parse_time
from .common import get_ctx, global_options, human_bytes
from .main import cli


@cli.command()
@global_options
def init() -> None:
    """Create a new repository; refuses to touch an existing one.

    Example: VAULT_PASSWORD_FILE=~/.vault-pw vault --repo /srv/backup init
    """
    c = get_ctx()
    res = api.init(c.settings, c.password(confirm=True))
    if c.json:
        c.emit_json(res.to_json())
    else:
        c.out(f"created repository {res.repository_id[:8]} at {res.location}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag the snapshot (repeatable).")
@click.option("--host", metavar="HOST", help="Host name to record (default: this machine's).")
@click.option("--time", "time_", metavar="TIME", help="Record TIME (ISO-8601) as the snapshot's time.")
@click.option("-e", "--exclude", "excludes", multiple=True, metavar="GLOB", help="Skip matching paths "
              "(repeatable; without '/' matches a name at any depth).")
@click.option("--exclude-file", "exclude_files", multiple=True, type=click.Path(dir_okay=False),
              help="Read exclude globs from FILE, one per line (# comments).")
@click.option("-x", "--one-file-system", is_flag=True, help="Do not cross filesystem boundaries.")
@click.option("-n", "--dry-run", is_flag=True, help="Read and chunk, but store nothing.")
@global_options
def backup(paths: tuple[str, ...], tags: tuple[str, ...], host: str | None, time_: str | None,
           excludes: tuple[str, ...], exclude_files: tuple[str, ...], one_file_system: bool, dry_run: bool) -> int:
    """Back up PATHS into a new snapshot. Unchanged files are not read again.

    Exit 3 when the snapshot was written but some files could not be read (each is named).

    Example: vault --repo /srv/backup backup /etc /home --exclude '*.tmp' --tag nightly
    """
    c = get_ctx()
    patterns = list(excludes)
    for f in exclude_files:
        try:
            with open(f, encoding="utf-8", errors="surrogateescape") as fh:
                patterns += read_exclude_file(fh.read())
        except OSError as exc:
            raise UsageError(f"cannot read exclude file {f}: {exc.strerror}") from None
    when = parse_time(time_, datetime.now(timezone.utc)) if time_ else None
    opts = BackupOptions(paths=list(paths), tags=[t for t in tags if t], host=host, time=when, excludes=patterns,
                         one_file_system=one_file_system, dry_run=dry_run)
    res = api.backup(c.settings, c.password_fn(), opts)
    for path, msg in res.errors:
        c.err(f"error: {path}: {msg}")
    if not c.quiet:
        for path, msg in res.warnings:
            c.err(f"warning: {path}: {msg}")
    if c.json:
        c.emit_json(res.to_json())
    else:
        head = "dry run: nothing stored" if dry_run else f"snapshot {res.snapshot_id[:8]} saved"
        c.out(f"{head}\nfiles: {res.files_new} new, {res.files_changed} changed, {res.files_unmodified} unmodified"
              f"\nadded to the repository: {human_bytes(res.bytes_added)} "
              f"(processed {human_bytes(res.bytes_processed)} in {res.duration_s:.1f} s)")
    if res.errors:
        c.err(f"vault: {len(res.errors)} path(s) could not be read; the snapshot holds everything else")
        return 3
    return 0
