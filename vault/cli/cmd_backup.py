"""``vault init`` and ``vault backup``."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import click
from click.core import ParameterSource

from .. import api
from ..archiver import BackupOptions
from ..chunker import ChunkerParams
from ..crypto import KdfParams
from ..errors import UsageError, VaultError
from ..excludes import Glob, compile_glob, read_exclude_file
from ..model import valid_name
from ..timespec import parse_time
from .common import get_ctx, global_options, human_bytes, printable, split_tags, utf8_text
from .progress import BackupProgress
from .main import cli


MAX_EXCLUDE_FILE = 16 << 20  # bytes: longer is no exclude file (one pointed at /dev/zero grew until killed)
MAX_PATH_LIST = 256 << 20  # bytes of a --files-from list (millions of paths; /dev/zero, `yes |`: refused)


def _read_bounded(fh, limit: int, what: str) -> bytes:
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what} is longer than {limit >> 20} MiB: refused (not a list of that kind?)")
    return data


def _exclude_file(path: str) -> list[str]:
    try:
        with open(path, "rb") as fh:
            data = _read_bounded(fh, MAX_EXCLUDE_FILE, f"exclude file {path}")
    except OSError as exc:
        raise UsageError(f"cannot read exclude file {path}: {exc.strerror}") from None
    return read_exclude_file(data.decode("utf-8", "surrogateescape"))


@cli.command()
@click.option("--pack-size", type=click.IntRange(1, 1024), default=16, show_default=True, metavar="MiB",
              help="Target size of pack files.")
@click.option("--compression-level", type=click.IntRange(0, 19), default=1, show_default=True,
              help="zstd level for data (0 = store uncompressed).")
@click.option("--chunk-min", type=click.IntRange(64, 1 << 20), default=512 * 1024, show_default=True,
              metavar="BYTES", help="Smallest chunk the chunker cuts.")
@click.option("--chunk-avg", type=click.IntRange(256, 4 << 20), default=1 << 20, show_default=True,
              metavar="BYTES", help="Average chunk size.")
@click.option("--chunk-max", type=click.IntRange(1024, 16 << 20), default=8 << 20, show_default=True,
              metavar="BYTES", help="Largest chunk.")
@click.option("--kdf", type=click.Choice(["argon2id", "scrypt"]), default="argon2id", show_default=True,
              help="Password key derivation function.")
@click.option("--kdf-memory", type=click.IntRange(1, 1024), default=32, show_default=True, metavar="MiB",
              help="Argon2id memory cost (the format allows up to 1 GiB).")
@click.option("--kdf-iterations", type=click.IntRange(1, 100), default=4, show_default=True,
              help="Argon2id time cost.")
@click.option("--copy-chunker-params-from", "chunker_from", metavar="URL",
              help="Use the chunker parameters and secret seed of the repository at URL (its password: "
                   "--from-password-file or VAULT_FROM_PASSWORD*, else this one's), so copies between the two "
                   "deduplicate.")
@click.option("--from-password-file", type=click.Path(dir_okay=False), help="Password file of the --copy-"
              "chunker-params-from repository.")
@global_options
def init(pack_size: int, compression_level: int, chunk_min: int, chunk_avg: int, chunk_max: int, kdf: str,
         kdf_memory: int, kdf_iterations: int, chunker_from: str | None, from_password_file: str | None) -> None:
    """Create a new repository; refuses to touch an existing one.

    Example: VAULT_PASSWORD_FILE=~/.vault-pw vault --repo /srv/backup init
    """
    c = get_ctx()
    chunker = ChunkerParams(chunk_min, chunk_avg, chunk_max)
    try:
        chunker.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if kdf != "argon2id":
        given = [f"--{p.replace('_', '-')}" for p in ("kdf_memory", "kdf_iterations")
                 if click.get_current_context().get_parameter_source(p) != ParameterSource.DEFAULT]
        if given:  # (scrypt's own parameters are fixed: format.md section 4)
            raise UsageError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to --kdf argon2id only")
    params = KdfParams(name=kdf, iterations=kdf_iterations, memory_kib=kdf_memory * 1024)
    other = None
    if chunker_from:
        other = (api.second_settings(c.settings, chunker_from),
                 lambda: c.second_password("FROM", from_password_file, None))
    res = api.init(c.settings, lambda: c.password(confirm=True), kdf=params, chunker=chunker,
                   compression_level=compression_level, pack_size=pack_size * 1024 * 1024, chunker_from=other)
    if c.json:
        c.emit_json(res.to_json())
    else:
        c.out(f"created repository {res.repository_id[:8]} at {res.location}")


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(readable=False))
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag the snapshot (repeatable; a,b: two tags).")
@click.option("--host", metavar="HOST", help="Host name to record (default: this machine's).")
@click.option("--time", "time_", metavar="TIME", help="Record TIME (ISO-8601, or as --at takes it) as the snapshot's time.")
@click.option("-e", "--exclude", "excludes", multiple=True, metavar="GLOB", help="Skip matching paths "
              "(repeatable; without '/' matches a name at any depth).")
@click.option("--exclude-file", "exclude_files", multiple=True, type=click.Path(dir_okay=False),
              help="Read exclude globs from FILE, one per line (# comments).")
@click.option("--iexclude", "iexcludes", multiple=True, metavar="GLOB", help="As --exclude, ignoring case "
              "(restic's).")
@click.option("--iexclude-file", "iexclude_files", multiple=True, type=click.Path(dir_okay=False),
              help="As --exclude-file, ignoring case.")
@click.option("--exclude-if-present", "if_present", multiple=True, metavar="NAME", help="Leave out the content of "
              "directories holding a file NAME (the directory and NAME are kept; repeatable).")
@click.option("--exclude-caches", is_flag=True, help="Leave out the content of directories holding a CACHEDIR.TAG "
              "file with its signature (bford.info/cachedir).")
@click.option("--files-from", "files_from", multiple=True, metavar="FILE", help="Read PATHS from FILE, one per line "
              "('-': stdin; lines trimmed, blank ones and # comments skipped, glob patterns expanded).")
@click.option("--files-from-verbatim", "files_verbatim", multiple=True, metavar="FILE", help="Read PATHS from FILE, "
              "one per line, each taken as it is ('-': stdin).")
@click.option("--files-from-raw", "files_from_raw", multiple=True, metavar="FILE", help="Read PATHS from FILE, "
              "separated by NUL bytes (find -print0; '-': stdin).")
@click.option("-x", "--one-file-system", is_flag=True, help="Do not cross filesystem boundaries.")
@click.option("-n", "--dry-run", is_flag=True, help="Read and chunk, but store nothing.")
@click.option("--force", is_flag=True, help="Read every file again, even those whose size, times and inode match "
              "the last snapshot's (a source whose inode numbers or times cannot be trusted: FAT after a "
              "remount, a clock set back).")
@click.option("--stdin", "stdin", is_flag=True, help="Back up standard input (a pipe) as one file, "
              "/--stdin-filename; no PATHS.")
@click.option("--stdin-filename", metavar="NAME", default="stdin", show_default=True,
              help="The file name standard input is stored as (--stdin, --stdin-from-command).")
@click.option("--stdin-from-command", "from_command", is_flag=True, help="PATHS are a command and its arguments "
              "(after --): back up its output as one file; if it exits non-zero, no snapshot is written (exit 1).")
@global_options
def backup(paths: tuple[str, ...], tags: tuple[str, ...], host: str | None, time_: str | None,
           excludes: tuple[str, ...], exclude_files: tuple[str, ...], iexcludes: tuple[str, ...],
           iexclude_files: tuple[str, ...], if_present: tuple[str, ...],
           exclude_caches: bool, files_from: tuple[str, ...], files_verbatim: tuple[str, ...],
           files_from_raw: tuple[str, ...], one_file_system: bool,
           dry_run: bool, force: bool, stdin: bool, stdin_filename: str, from_command: bool) -> int:
    """Back up PATHS into a new snapshot. Unchanged files are not read again.

    Exit 3 when the snapshot was written but some files could not be read (each is named).

    Example: vault --repo /srv/backup backup /etc /home --exclude '*.tmp' --tag nightly

    Example: vault --repo /srv/backup backup --stdin-from-command --stdin-filename db.sql -- pg_dump mydb
    """
    c = get_ctx()
    ctx = click.get_current_context()
    streamed = stdin or from_command
    listed = files_from or files_verbatim or files_from_raw
    if listed and streamed:
        raise UsageError("--files-from does not apply to --stdin or --stdin-from-command")
    if listed:
        paths = paths + _paths_from(files_from, files_verbatim, files_from_raw,
                                    lambda m: c.err(printable(f"vault: warning: {m}")))
        if not paths:
            raise UsageError("--files-from: the file(s) name no path")
    if stdin and from_command:
        raise UsageError("give --stdin or --stdin-from-command, not both")
    if not streamed and ctx.get_parameter_source("stdin_filename") != ParameterSource.DEFAULT:
        raise UsageError("--stdin-filename applies to --stdin and --stdin-from-command only")
    for name in if_present:
        if not valid_name(os.fsencode(name)):
            raise UsageError(f"--exclude-if-present takes a file name (no '/'), not {name!r}")
    if streamed:
        for given, what in ((excludes, "--exclude"), (exclude_files, "--exclude-file"), (iexcludes, "--iexclude"),
                            (iexclude_files, "--iexclude-file"),
                            (if_present, "--exclude-if-present"), (exclude_caches, "--exclude-caches"),
                            (one_file_system, "--one-file-system"), (force, "--force")):
            if given:
                raise UsageError(f"{what} does not apply to --stdin{'-from-command' if from_command else ''}")
        name = os.fsencode(stdin_filename)
        parts = name.strip(b"/").split(b"/")
        if not all(valid_name(p) and len(p) <= 255 for p in parts):
            raise UsageError("--stdin-filename must be a file name or a path of names (dumps/db.sql: no empty "
                             "component, '.' or '..'; at most 255 bytes each)")
        if stdin and paths not in ((), ("-",)):
            raise UsageError("--stdin backs up standard input: give no PATHS")
        if from_command and not paths:
            raise UsageError("--stdin-from-command needs the command: vault backup --stdin-from-command -- CMD ARGS")
        if stdin and sys.stdin is None:  # (started with it closed: descriptor 0 may be any file vault opens)
            raise UsageError("--stdin: standard input is closed; pipe the data in (cmd | vault backup --stdin)")
        if stdin and sys.stdin.isatty():
            raise UsageError("--stdin: standard input is a terminal; pipe the data in (cmd | vault backup --stdin)")
    elif not paths:
        raise UsageError("Missing argument 'PATHS...': name what to back up")
    elif "" in paths:  # (abspath would make it the working directory: `vault backup "$SRC"` with SRC unset backed
        raise UsageError("a PATH is empty: name what to back up (was a variable unset?)")  # up $HOME from cron)
    elif paths == ("-",) and not os.path.lexists("-"):  # (borg's way to say standard input)
        raise UsageError("'-' is no file here: to back up standard input use --stdin "
                         "(cmd | vault backup --stdin --stdin-filename NAME)")
    patterns: list[str | Glob] = list(excludes)
    for f in exclude_files:
        patterns += _exclude_file(f)
    patterns += [compile_glob(p, fold=True) for p in iexcludes]
    for f in iexclude_files:
        patterns += [compile_glob(p, fold=True) for p in _exclude_file(f)]
    when = parse_time(time_, datetime.now(timezone.utc)) if time_ is not None else None  # ("" is an error)
    if host is not None and (host := utf8_text(host)) is None:
        raise UsageError("--host must be text (UTF-8): host names are matched and shown as text")
    # (--tag a,b is two tags, as restic takes it: the filters read "a,b" as both, and could not select one tag
    # holding a comma)
    tags = split_tags(tags, "--tag")
    opts = BackupOptions(paths=[] if streamed else list(paths), tags=list(tags), host=host, time=when,
                         excludes=patterns, exclude_if_present=list(if_present), exclude_caches=exclude_caches,
                         one_file_system=one_file_system, dry_run=dry_run, force=force,
                         on_file=(lambda kind, path: c.err(printable(f"{kind:8} {path}"))) if c.verbose else None)
    progress = BackupProgress(enabled=not (c.quiet or c.json or c.verbose))
    try:
        with _source(stdin, from_command, paths) as (fd, check):
            if streamed:
                opts = dataclasses.replace(opts, stdin_name=name, stdin_fd=fd, stdin_check=check)
            res = api.backup(c.settings, c.password_fn(), opts, progress=progress)
    finally:
        progress.done()
    for path, msg in res.errors:
        c.err(printable(f"error: {path}: {msg}"))
    if not c.quiet:
        for path, msg in res.warnings:
            c.err(printable(f"warning: {path}: {msg}"))
    if c.json:
        c.emit_json(res.to_json())
    else:
        head = "dry run: nothing stored" if dry_run else f"snapshot {res.snapshot_id[:8]} saved"
        c.out(f"{head}\nfiles: {res.files_new} new, {res.files_changed} changed, {res.files_unmodified} unmodified"
              f"\n{'would add' if dry_run else 'added'} to the repository: {human_bytes(res.bytes_added)} "
              f"(processed {human_bytes(res.bytes_processed)} in {res.duration_s:.1f} s)")
    if res.errors:
        c.err(f"vault: {len(res.errors)} path(s) could not be read; the snapshot holds everything else")
        return 3
    return 0


def _paths_from(lists: tuple[str, ...], verbatim: tuple[str, ...], raw: tuple[str, ...],
                warn: Callable[[str], None]) -> tuple[str, ...]:
    """The PATHS of the ``--files-from*`` files, in order, as the bytes they hold (str with surrogate escapes, as
    click passes arguments). ``--files-from`` is restic's: lines trimmed, blank ones and ``#`` comments skipped,
    glob patterns expanded (one that matches nothing is skipped with a warning); ``--files-from-verbatim``: each
    line as it is; ``--files-from-raw``: NUL-separated."""
    out: list[str] = []
    if (lists + verbatim + raw).count("-") > 1:
        raise UsageError("standard input ('-') can be read by one --files-from only")
    for name, kind in [(f, "lines") for f in lists] + [(f, "verbatim") for f in verbatim] + [(f, "raw") for f in raw]:
        try:
            if name == "-":
                data = _read_bounded(sys.stdin.buffer, MAX_PATH_LIST, "--files-from -") if sys.stdin else b""
            else:
                with open(name, "rb") as fh:
                    data = _read_bounded(fh, MAX_PATH_LIST, f"--files-from {name}")
        except OSError as exc:
            raise UsageError(f"cannot read --files-from {name}: {exc.strerror or exc}") from None
        for item in data.split(b"\0" if kind == "raw" else b"\n"):
            if kind == "verbatim":
                item = item.removesuffix(b"\r")
            elif kind == "lines":
                item = item.strip()
                if item.startswith(b"#"):
                    continue
                if glob.has_magic(item):
                    found = sorted(glob.glob(item))
                    if not found:
                        warn(f"--files-from {name}: {os.fsdecode(item)} matches nothing: skipped")
                    out.extend(os.fsdecode(p) for p in found)
                    continue
            if item:
                out.append(os.fsdecode(item))
    return tuple(out)


@contextlib.contextmanager
def _source(stdin: bool, from_command: bool, argv: tuple[str, ...]) -> Iterator[tuple[int, Callable[[], None]]]:
    """(the descriptor to back up, the check of its producer at the end of the stream)."""
    if not from_command:
        yield (0 if stdin else -1), (lambda: None)
        return
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE)
    except OSError as exc:
        raise VaultError(f"--stdin-from-command: cannot run {argv[0]}: {exc.strerror or exc}") from None

    def check() -> None:
        proc.stdout.close()
        code = proc.wait()
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise VaultError(f"--stdin-from-command: {argv[0]} {how}: no snapshot written (its output is "
                             "not trusted whole; what was stored goes with the next prune)")

    try:
        yield proc.stdout.fileno(), check
    finally:
        if proc.poll() is None:  # (vault failed or was stopped first)
            proc.kill()
            proc.wait()
        if proc.stdout and not proc.stdout.closed:
            proc.stdout.close()
