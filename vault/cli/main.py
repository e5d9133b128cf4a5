"""Entry point: the ``vault`` group, and the one place that turns errors into messages and exit codes.

Exit codes: 0 ok, 1 error, 2 usage error, 3 backup written but some sources unreadable, 10 repository not
found, 11 repository locked, 12 wrong password, 20 verify/restore found damage.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import gc
import os
import resource
import signal
import re
import sys
import threading
import warnings

import click

from .. import __version__, stopsignals
from . import _interrupted_while_loading
from ..config import use_utc_if_zone_unusable
from ..errors import VaultError, VaultWarning
from ..model import DEEPEST
from .common import (forget_start_warnings, global_options, printable, say_start_warnings, stderr_line,
                     warn_at_start)
from .memory import tune_malloc


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vault")
@global_options
def cli() -> None:
    """vault: deduplicated, compressed, encrypted backups with point-in-time restore.

    Example: vault --repo /srv/backup init && vault --repo /srv/backup backup /etc /home
    """


def _register() -> None:
    from . import cmd_admin, cmd_backup, cmd_browse, cmd_restore  # noqa: F401  (commands attach to cli)


_sigints = 0
_terminated = 0  # the exit code of a stop by SIGTERM (143) or SIGHUP (129); 0: none


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (cron's or systemd's stop, `kill`) or SIGHUP (the terminal or ssh session went away): stopped
    as cleanly as by Ctrl-C (lock released, temp files removed), exit 128 + the signal's number."""
    global _terminated
    if stopsignals.defer(signum):
        return
    _terminated = 128 + signum
    _on_sigint(signum, frame)


def _drop_dead_stdout() -> None:
    """stdout's reader is gone: what is still buffered goes nowhere, else the interpreter's own flush at exit
    fails again ("Exception ignored ... BrokenPipeError", exit 120)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, AttributeError, ValueError):
        pass


def _from_click_echo(exc: BaseException) -> bool:
    """Whether ``exc`` was raised writing click's own output (help, version): the output failed, not vault."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "echo" and code.co_filename.replace("\\", "/").endswith("click/utils.py"):
            return True
        tb = tb.tb_next
    return False


def _internal_error(exc: BaseException) -> None:
    stderr_line(printable(f"vault: internal error: {type(exc).__name__}: {exc} (run with -v for details)"))


def _stopped() -> int:
    """The message and exit code of a stopped command (Ctrl-C: 130)."""
    what = {143: "terminated", 129: "hung up"}.get(_terminated, "interrupted")  # (the word of the exit-code list)
    stderr_line(f"vault: {what}")  # (a hung-up terminal cannot take it: lost, see stderr_line)
    return _terminated or 130


def _on_sigint(signum: int, frame: object) -> None:  # noqa: ARG001
    """Ctrl-C: the first stops the command (KeyboardInterrupt: work in hand is finished or undone, temp files
    removed, the lock released); a second is ignored so that clean-up is not cut short half way (`timeout -s
    INT` signals vault and then its whole group: two at once); a third stops at once."""
    global _sigints
    if stopsignals.defer(signum):
        return
    _sigints += 1
    if _sigints != 2:
        raise KeyboardInterrupt


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """The library's warnings (``VaultWarning``) as one line on stderr, even with -q (like an error: something
    the user must hear of); a third-party library's only with -v, as Python prints them (dateutil's about a
    response header cut short by the network -- which vault retries -- reached cron's mail with -q, exit 0)."""
    if issubclass(category, VaultWarning):
        stderr_line(printable(f"vault: warning: {message}"))
    elif _verbose and sys.stderr is not None:  # (None: stderr closed, `2>&-`)
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


_verbose = False


def _asks_verbose(args: list[str]) -> bool:
    """Whether -v is given (before any ``--``), also in a cluster of flags that take no value (``-vv``, ``-xv``,
    ``-lv``): decided before click parses the command line, since an error may come first (a module that cannot
    load, no descriptors left)."""
    for a in args:
        if a == "--":
            return False
        if a == "--verbose" or re.fullmatch(r"-[qvnxl]*v[qvnxl]*", a):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    global _sigints, _terminated, _verbose
    _sigints, _terminated = 0, 0
    stopsignals.reset()
    forget_start_warnings()
    _register()
    tune_malloc()
    if signal.getsignal(signal.SIGINT) in (_interrupted_while_loading, signal.default_int_handler):
        signal.signal(signal.SIGINT, _on_sigint)  # loaded: Ctrl-C is KeyboardInterrupt again (see _on_sigint)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # (not when ignored: `nohup vault ...` keeps running)
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_sigterm)
    verbose = _verbose = _asks_verbose(list(sys.argv[1:] if argv is None else argv))
    _usable_time_zone()
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", VaultWarning)
    try:
        # (not cli.main: it prints an empty line before turning a Ctrl-C into Abort -- two lines on stderr)
        with cli.make_context("vault", list(sys.argv[1:] if argv is None else argv)) as ctx:
            rv = cli.invoke(ctx)
        code = rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        _usage_line(exc)
        code = exc.exit_code
    except (click.exceptions.Abort, EOFError):  # (a prompt answered by end of input, or declined)
        code = _stopped()
    except VaultError as exc:
        # one line, whatever names it holds; with the retries given up on, if any (the backends' notes)
        gave_up = [n for n in getattr(exc, "__notes__", ()) if isinstance(n, str) and n.startswith("gave up after")]
        stderr_line(printable(f"vault: {exc}" + (f" ({gave_up[-1]})" if gave_up and gave_up[-1] not in str(exc) else "")))
        code = exc.exit_code
    except KeyboardInterrupt:
        code = _stopped()
    except BrokenPipeError:  # stdout closed early (`| head`, a pager quit): silent, exit 141 as for any Unix
        code = 141             # tool killed by SIGPIPE (nothing vault was doing is affected: output comes last)
        _drop_dead_stdout()
    except OSError as exc:
        if _terminated:  # (stopped by a signal, and the clean-up then hit a terminal that went away: EIO)
            code = _stopped()
        elif verbose and exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM) and not _from_click_echo(exc):
            raise  # (an internal error's traceback; these three have their own line, which says more)
        elif exc.errno in (errno.EMFILE, errno.ENFILE):  # (anywhere: even a module loaded late, e.g. _strptime)
            stderr_line("vault: too many open files (raise the limit: `ulimit -n`)")
            code = 1
        elif exc.errno == errno.ENOMEM:  # (mmap of a pack buffer, fork: an OSError, not a MemoryError)
            stderr_line("vault: out of memory (a limit such as `ulimit -v`, or the machine's); nothing already in "
                        "the repository is affected")
            code = 1
        elif _from_click_echo(exc):  # (--help or --version into >/dev/full or a closed stdout)
            stderr_line(f"vault: cannot write the output: {exc.strerror or exc}")
            _drop_dead_stdout()  # (what is still buffered would fail again: said twice, then Python's exit 120)
            code = 1
        else:
            _internal_error(exc)
            code = 1
    except MemoryError:
        if verbose:
            raise
        stderr_line("vault: out of memory (a limit such as `ulimit -v`, or the machine's); nothing already in the "
                   "repository is affected")
        code = 1
    except RecursionError:
        if verbose:
            raise
        stderr_line(f"vault: a directory tree nests more than {DEEPEST:,} levels deep: not supported")
        code = 1
    except RuntimeError as exc:
        if verbose:
            raise
        if "can't start new thread" in str(exc):
            stderr_line("vault: cannot start a thread: the process limit is reached (`ulimit -u`) or memory is "
                       "short; nothing already in the repository is affected")
        else:
            _internal_error(exc)
        code = 1
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        if verbose:
            raise
        _internal_error(exc)
        code = 1
    try:
        if sys.stdout is not None:  # None when the command runs with stdout closed (`>&-`)
            sys.stdout.flush()
    except BrokenPipeError:
        _drop_dead_stdout()
        code = code or 141
    except OSError as exc:  # the output could not be delivered (e.g. >/dev/full): say so, do not claim success
        stderr_line(f"vault: cannot write the output: {exc.strerror or exc}")
        _drop_dead_stdout()
        code = code or 1
    if code not in (0, 141):  # (a -q run that failed: the warnings held back may explain it)
        say_start_warnings()
    return code


def _usable_time_zone() -> None:
    """A local time zone Python cannot represent: UTC instead, said once (``config.use_utc_if_zone_unusable``)."""
    problem = use_utc_if_zone_unusable()
    if problem:
        warn_at_start(printable(f"vault: warning: {problem}"))


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # (click 8.2 and later)


def _usage_line(exc: click.ClickException) -> None:
    """A usage error click found, in one line as vault's own (click's four -- "Usage:", "Try", a blank line,
    "Error:" -- echoed values raw: a newline split it, an escape sequence reached the terminal), naming the
    help to read; into a stderr that cannot take it (2>/dev/full), lost, never an exit status of 120."""
    if isinstance(exc, _NO_ARGS_IS_HELP):  # (`vault`, `vault key` alone: the help is the message)
        try:
            exc.show()
        except OSError:  # (2>/dev/full: lost, as any line)
            pass
        return
    text = exc.format_message().strip().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        text += f" (try '{ctx.command_path} --help')"
    stderr_line(printable(f"vault: {text}"))


def _harden() -> None:
    """No core dumps: a crash (a C extension's segfault, SIGBUS, SIGABRT) wrote the master key and the password
    to disk in one. RLIMIT_CORE 0 is honoured by the kernel and by systemd-coredump and apport; vault's own
    workers inherit it. (Not PR_SET_DUMPABLE: it would also hide /proc/PID from the user's own monitoring.)"""
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _in_utf8_mode() -> None:
    """Names are bytes, shown and stored as UTF-8 whatever the locale (a manifest's ``paths``, docs/format.md;
    every --json path): under a locale whose charset is not UTF-8 (ISO-8859-1, EUC-JP; or PYTHONUTF8=0 with
    LC_ALL=C) Python decoded them with that charset -- a valid UTF-8 name came out of --json as mojibake, with no
    ``path_b64``, and a snapshot's paths were stored so. The interpreter is started again in UTF-8 mode, with
    the same arguments as bytes (in that mode every name still round-trips: what is not UTF-8 is escaped)."""
    if sys.flags.utf8_mode or codecs.lookup(sys.getfilesystemencoding()).name == "utf-8" or not sys.executable:
        return
    flags = [f for f, on in (("-E", sys.flags.ignore_environment), ("-s", sys.flags.no_user_site),
                             ("-I", sys.flags.isolated)) if on]
    # -P, and the package's own directory last if it is not on the path already: `-m vault` put the working
    # directory first on sys.path, and a click.py (or vault/) there was imported -- code run as whoever runs
    # vault, root's cron in /tmp included; first, it put site-packages before the standard library. The
    # directory goes as the repr of its bytes: the program text must be ASCII (a Latin-1 name in it, decoded
    # as UTF-8 by the new interpreter, was refused)
    home = os.fsencode(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    code = (f"import os, sys; h = os.fsdecode({home!r}); h in sys.path or sys.path.append(h); "
            "from vault.cli.main import entry; entry()")
    argv = [sys.executable, *flags, "-P", "-X", "utf8", "-c", code, *(os.fsencode(a) for a in sys.argv[1:])]
    try:
        os.execv(sys.executable, argv)
    except OSError:  # (no way to start it again: the locale's charset, as before)
        pass


def entry() -> None:
    """The ``vault`` console script: process-wide tuning that a library user keeps control of, then main."""
    _in_utf8_mode()
    _harden()
    # sqlite-utils imports numpy when it is installed (only to convert numpy values); vault never passes
    # any, and numpy costs ~100 ms of start-up plus an OpenBLAS thread pool that spins beside the workers.
    sys.modules.setdefault("numpy", None)  # type: ignore[arg-type]
    # A backup makes ~10 objects per file that live until their directory is stored; the default gen-0
    # threshold (700) would run the cyclic GC thousands of times over them, holding the GIL each time.
    gc.set_threshold(50_000, 20, 20)
    code = main()
    # the command is over and its exit code decided: a Ctrl-C now (a second one, or `timeout -s INT` signalling
    # the whole group) would only turn it into a KeyboardInterrupt in the interpreter's teardown
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if code in (129, 130, 143) or threading.active_count() == 1:
        # stopped, and cleaned up as far as it goes: a thread still blocked (a fetch from a store that does not
        # answer, after a third Ctrl-C) must not keep the process alive -- the interpreter would join it for ever.
        # Done, with no thread left: the command has closed what it opened (locks released, the catalog closed,
        # the output written) and the interpreter's teardown -- freeing every object one by one -- is ~55 ms of
        # every command's wall time for nothing
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    # Run through the package module, so the commands (which attach to vault.cli.main.cli) are found.
    from vault.cli.main import entry as _entry

    _entry()
