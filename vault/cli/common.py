"""Options every command accepts (before or after the command name), the context they build, and output."""

from __future__ import annotations

import codecs
import functools
import io
import getpass
import os
import json
import select
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import click

from ..config import Settings, get_password, get_second_password
from ..errors import NoPassword, UsageError, VaultError
from ..jsonshape import with_b64
from ..timespec import parse_wait, to_utc

_KEY = "vault.globals"


def _store(ctx: click.Context, param: click.Parameter, value: object) -> None:
    if value is None or value is False or value == () or value == 0:
        return
    ctx.find_root().meta.setdefault(_KEY, {})[param.name] = value


_GLOBALS: list[tuple[tuple[str, ...], dict]] = [
    (("-r", "--repo"), dict(metavar="URL", help="Repository: a path, file://PATH or s3://BUCKET[/PREFIX] "
                            "[env: VAULT_REPOSITORY].")),
    (("--password-file",), dict(metavar="FILE", help="Read the password from FILE [env: VAULT_PASSWORD_FILE].")),
    (("--password-command",), dict(metavar="CMD", help="Run CMD and use its output as the password "
                                   "[env: VAULT_PASSWORD_COMMAND].")),
    (("--cache-dir",), dict(metavar="DIR", help="Where the local catalog lives [env: VAULT_CACHE_DIR; "
                            "default: ~/.cache/vault].")),
    (("--s3-endpoint",), dict(metavar="URL", help="S3 endpoint URL [env: VAULT_S3_ENDPOINT].")),
    (("--lock-wait",), dict(metavar="DURATION", help="Wait this long for a conflicting lock before failing "
                            "with exit 11 (0, 30s, 5m, 1h, 1d; default 3m).")),
    (("--no-lock",), dict(is_flag=True, help="Read without a shared lock (a read-only repository: ls, find, "
                           "diff, restore, dump, verify; copy's source; the repository repair --from-repo heals "
                           "from). A prune running meanwhile can make it fail.")),
    (("-j", "--jobs"), dict(type=click.IntRange(0, 256), help="Workers (default: number of cores): with a local "
                            "repository, backup, restore and verify --read-data use worker processes (at most "
                            "4 by default; 1: one process), else threads [env: VAULT_JOBS].")),
    (("--connections",), dict(type=click.IntRange(1, 256), help="Parallel connections to a remote repository "
                              "(default 8) [env: VAULT_CONNECTIONS].")),
    (("--s3-storage-class",), dict(metavar="CLASS", help="Storage class for data packs, e.g. STANDARD_IA "
                                   "(metadata stays STANDARD) [env: VAULT_S3_STORAGE_CLASS].")),
    (("--json", "json_out"), dict(is_flag=True, help="Machine-readable output: one JSON document on stdout.")),
    (("-q", "--quiet"), dict(is_flag=True, help="Print nothing on success.")),
    (("-v", "--verbose"), dict(count=True, help="More detail.")),
]


def global_options(f: Callable) -> Callable:
    """Attach the global options to the group or to a subcommand (so both ``vault --repo R backup`` and
    ``vault backup --repo R`` work). Values are stored on the root context, the later one winning."""
    for decls, kw in reversed(_GLOBALS):
        f = click.option(*decls, expose_value=False, callback=_store, **kw)(f)
    return f


def terminal_prompt() -> Callable[[str], str] | None:
    """How to ask for a password: on the terminal when stdin is one, else not at all (None). Started with stdin
    closed (`<&-`), Python's sys.stdin is None: every command was an internal error."""
    return ask if sys.stdin is not None and sys.stdin.isatty() else None


def ask(prompt: str) -> str:
    """A password from the terminal; end of input (Ctrl-D) is no password (exit 1), not an interruption."""
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise NoPassword("no password given (end of input at the prompt)") from None


@dataclass
class Ctx:
    settings: Settings
    json: bool
    quiet: bool
    verbose: int

    def password(self, confirm: bool = False) -> bytes:
        prompt = terminal_prompt()
        return get_password(self.settings, prompt, confirm=confirm)

    def second_password(self, role: str, source_file: str | None, source_command: str | None) -> bytes:
        prompt = terminal_prompt()
        return get_second_password(self.settings, role, source_file, source_command, prompt)

    def password_fn(self) -> Callable[[], bytes]:
        return functools.partial(self.password)

    def emit_json(self, doc: object) -> None:
        # ASCII-escaped: names that are not UTF-8 come out as \udcXX escapes, still valid JSON; each such path
        # also as its exact bytes (``with_b64``), which parsers outside Python cannot get back from the escapes
        _stdout(json.dumps(with_b64(doc), indent=2, ensure_ascii=True, default=str))

    def emit_json_stream(self, head: dict | None, items: Iterable[object], tail: Callable[[], dict] | None = None,
                         key: str = "entries") -> None:
        """One JSON document of any length in bounded memory: ``head``'s fields, then ``key`` holding the list
        of ``items`` (or, with no ``head``, the list alone), then ``tail()``'s fields. Built in a spooled temp
        file and written out only when complete, so a failure half-way leaves stdout empty, as ``emit_json``."""
        dump = functools.partial(json.dumps, ensure_ascii=True, default=str)
        with tempfile.SpooledTemporaryFile(max_size=16 << 20, mode="w+", encoding="ascii") as buf:
            if head is not None:
                buf.write("{" + "".join(f"\n  {dump(k)}: {dump(v)}," for k, v in head.items()) + f"\n  {dump(key)}: ")
            sep = "["
            for item in items:
                buf.write(f"{sep}\n    {dump(item)}")
                sep = ","
            buf.write("[]" if sep == "[" else "\n  ]")
            if head is not None:
                buf.write("".join(f",\n  {dump(k)}: {dump(v)}" for k, v in (tail() if tail else {}).items()) + "\n}")
            buf.seek(0)
            while piece := buf.read(1 << 20):
                _stdout(piece, nl=False)
            _stdout("")

    def out(self, text: str) -> None:
        if not self.quiet and not self.json:
            _stdout(text)

    def out_lines(self, lines: Iterable[str]) -> None:
        """``out`` for each of many lines (a listing). Into a pipe or a file they are written a batch at a time:
        one write per line cost about as much as finding the entries (100,000 lines: ~3 s). A batch goes out
        when it holds 256 lines, or with the first line that comes 0.2 s after the batch began. On a terminal
        each line is written as it comes (a slow walk of a remote repository shows every line at once)."""
        if self.quiet or self.json:
            for _ in lines:
                pass
            return
        if is_terminal(sys.stdout):
            for line in lines:
                _stdout(line)
            return
        batch: list[str] = []
        since = time.monotonic()
        for line in lines:
            batch.append(line)
            if len(batch) >= 256 or time.monotonic() - since > 0.2:
                _stdout("\n".join(batch))
                batch.clear()
                since = time.monotonic()
        if batch:
            _stdout("\n".join(batch))

    def err(self, text: str) -> None:
        stderr_line(text)

    def warn_unreadable(self, unreadable: dict[str, str], consequence: str, always: bool = False) -> None:
        """One line on stderr per snapshot whose manifest could not be read (``always``: even with -q)."""
        if always or not self.quiet:
            for sid in sorted(unreadable):
                self.err(printable(f"vault: warning: snapshot {sid[:8]} cannot be read ({unreadable[sid]}): "
                                   f"{consequence}"))


def local_time(t: datetime) -> str:
    """A snapshot time for text output: this machine's local time, as ``--at`` without an offset reads it --
    with the offset when it would not read it back (the hour repeated when summer time ends shows each wall
    time twice; ``--at`` takes the first), so a time copied from the output always selects that snapshot."""
    try:
        local = t.astimezone()
        shown = f"{local.year:04d}-{local:%m-%d %H:%M:%S}"
        try:
            ambiguous = to_utc(local.replace(tzinfo=None, microsecond=0)) != t.replace(microsecond=0)
        except (OverflowError, ValueError):  # (year 1 west of UTC: as local time it could not be read back)
            return f"{t.year:04d}-{t:%m-%d %H:%M:%S}Z"
        if ambiguous:
            offset = local.strftime("%z")
            shown += f"{offset[:3]}:{offset[3:5]}"
        return shown
    except OverflowError:  # the edge of datetime's range (year 9999 east of UTC): shown in UTC instead
        return f"{t.year:04d}-{t:%m-%d %H:%M:%S}Z"


_CONTROL = {c: "?" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


def utf8_text(value: str) -> str | None:
    """A command-line value as text: the bytes given, read as UTF-8 (``os.fsencode`` gives them back whatever
    Python decoded argv with: ASCII with lone surrogates in the C locale when its UTF-8 mode is off, where a
    UTF-8 tag was refused as "not UTF-8"); None when they are not UTF-8."""
    try:
        return os.fsencode(value).decode("utf-8")
    except UnicodeError:
        return None


def texts(values: Iterable[str]) -> list[str]:
    """Command-line values (hosts, tags to filter on) as text, to compare with the stored ones (one that is not
    UTF-8 is kept as given: it matches nothing)."""
    return [utf8_text(v) or v for v in values]


def split_tags(values: Iterable[str], option: str) -> list[str]:
    """The tags given (``a,b`` is two, as restic takes it), each once, in order; UsageError for one that is not
    text (tags are matched and shown as text)."""
    tags = [utf8_text(t) for t in dict.fromkeys(p for t in values for p in t.split(",") if p)]
    if None in tags:
        raise UsageError(f"{option} must be text (UTF-8): tags are matched and shown as text")
    return tags


def printable(text: str) -> str:
    """``text`` with control characters (newlines, escape sequences) shown as '?': for one-line fields of the
    text output whose content the repository supplies (host names, tags)."""
    return text.translate(_CONTROL)


def is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal; not when it is closed (`>&-`, `2>&-`: Python's stream is None then)."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _stdout(text: str, nl: bool = True) -> None:
    """One line (or document) to stdout; an output that cannot take it (a full disk behind a redirection) is a
    one-line error, not an internal one. A closed pipe is left to main (BrokenPipeError). Started with stdout
    closed (`>&-`, a cron line that wants no output): nothing is written, and that is no error."""
    try:
        if sys.stdout is None:
            return
        if not _OUT.write(text + ("\n" if nl else "")):
            click.echo(text, nl=nl)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise VaultError(f"cannot write the output: {exc.strerror or exc}") from None


def _own_bytes(exc: UnicodeError) -> tuple[bytes, int]:
    """Encoding error handler: a name's byte that is not UTF-8 (a lone surrogate U+DC80-U+DCFF, as os.fsdecode
    gives it) as that byte, any other character the encoding lacks as '?' -- one character at a time, so one
    such character never changes how the rest of a line or batch comes out."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    if not _ascii_based(exc.encoding):  # (UTF-16, UTF-32: a lone byte is no code unit there -- the codec
        return "?" * (exc.end - exc.start), exc.end  # refuses it, and the error escaped as an internal one)
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        out += bytes([ord(ch) - 0xDC00]) if 0xDC80 <= ord(ch) <= 0xDCFF else b"?"
    return bytes(out), exc.end


@functools.lru_cache(maxsize=None)
def _ascii_based(encoding: str) -> bool:
    """Whether ``encoding`` writes ASCII as ASCII, one byte each (then a name's own bytes can be written too)."""
    try:
        return "?a/".encode(encoding) == b"?a/"
    except (LookupError, UnicodeError):
        return False


codecs.register_error("vault-own-bytes", _own_bytes)


class _Writer:
    """Text to a stream's descriptor, to the last byte: a loop asks again for what a write left (when the reader
    of a pipe goes away during a write the kernel returns the part it took, and Python's buffered stdout dropped
    the rest without a word: `vault snapshots --json | head -c 10` exited 0, not 141; BrokenPipeError now), and
    waits when the descriptor was left non-blocking (Python's text layer dropped such lines: `-v` lines over a
    non-blocking `2>&1`). One incremental encoder per stream, chosen as click chooses (UTF-8 where Python says
    ASCII), so a UTF-16 stdout gets one BOM, not one per write; a name that is not UTF-8 comes out as its own
    bytes whatever the locale (a UTF-8 locale's strict stdout made `ls` of such a name an internal error)."""

    def __init__(self, name: str):
        self.name = name
        self._encoder = None

    def write(self, text: str) -> bool:
        """False when the stream has no descriptor (a test's capture): to be written the usual way."""
        stream = getattr(sys, self.name)
        try:
            fd = stream.fileno()
        except (AttributeError, ValueError, io.UnsupportedOperation):
            return False
        if self._encoder is None:
            self._encoder = self._make_encoder(stream, fd)
        data = self._encoder.encode(text)
        stream.flush()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                select.select([], [fd], [])
        return True

    @staticmethod
    def _make_encoder(stream, fd: int):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            if codecs.lookup(encoding).name == "ascii":  # (click's rule: an ASCII stdout is a misconfiguration)
                encoding = "utf-8"
        except LookupError:
            encoding = "utf-8"
        encoder = codecs.getincrementalencoder(encoding)("vault-own-bytes")
        try:  # (appending to a file that holds text already: no BOM in the middle of it, as TextIOWrapper does)
            if os.lseek(fd, 0, os.SEEK_CUR) != 0:
                encoder.setstate(0)
        except OSError:
            pass
        return encoder


_OUT, _ERR = _Writer("stdout"), _Writer("stderr")


def stderr_line(text: str) -> None:
    """One line to stderr, whole even when it was left non-blocking; a stderr that cannot take it (closed, a
    terminal gone, a full disk) loses the line and those after it, never the command."""
    try:
        if sys.stderr is not None and not _ERR.write(text + "\n"):
            click.echo(text, err=True)
    except OSError:
        drop_dead_stderr()


def drop_dead_stderr() -> None:
    """stderr is a terminal that went away: later messages go nowhere, instead of failing the command (and
    Python's exit status turning 120 when it cannot flush stderr at the end)."""
    try:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 -- for the rest of the process
    except OSError:
        pass


_start_warnings: list[str] = []  # said when the command's options are known: not with -q


def warn_at_start(line: str) -> None:
    """A warning found before the command line was parsed (the time zone): said on stderr by the command's
    first ``get_ctx``, unless -q (nothing on success: a cron job's mail every night)."""
    _start_warnings.append(line)


def forget_start_warnings() -> None:
    """At the start of a command: none left over from an earlier one in this process (a usage error came first)."""
    _start_warnings.clear()


def say_start_warnings() -> None:
    """The held warnings, now (a -q command failed: they may explain why -- a time read as UTC)."""
    for line in _start_warnings:
        stderr_line(line)
    _start_warnings.clear()


def get_ctx() -> Ctx:
    ctx = click.get_current_context()
    g = ctx.find_root().meta.get(_KEY, {})
    if g.get("quiet") and g.get("verbose"):  # (-q is for cron: nothing on success; -v would print anyway)
        raise UsageError("-q/--quiet and -v/--verbose contradict each other: give one")
    wait = g.get("lock_wait")
    s = Settings(repo=g.get("repo"), password_file=g.get("password_file"),
                 password_command=g.get("password_command"), cache_dir=g.get("cache_dir"),
                 s3_endpoint=g.get("s3_endpoint"), lock_wait=parse_wait(wait) if wait is not None else None,
                 jobs=g.get("jobs") or 0, connections=g.get("connections") or 0,
                 s3_storage_class=g.get("s3_storage_class"), no_lock=bool(g.get("no_lock")))
    c = Ctx(settings=s.resolved(), json=bool(g.get("json_out")), quiet=bool(g.get("quiet")),
            verbose=int(g.get("verbose") or 0))
    if not c.quiet:  # (with -q, held: said only if the command fails)
        say_start_warnings()
    return c


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
