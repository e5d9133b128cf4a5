"""Settings: repository URL, password sources, cache dir, S3 endpoint, lock wait. The one reader of os.environ.

Precedence: a command-line option, then its environment variable, then the default.
Password sources, first found wins: ``--password-file``, ``--password-command``, ``VAULT_PASSWORD_FILE``,
``VAULT_PASSWORD_COMMAND``, ``VAULT_PASSWORD``, then a prompt -- only when stdin is a terminal.
"""

from __future__ import annotations

import os
import shlex
import shutil
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import NoPassword, UsageError

DEFAULT_LOCK_WAIT = 180.0
DEFAULT_CONNECTIONS = 8  # parallel requests to a remote store (S3) when neither --connections nor the env says


@dataclass
class Settings:
    repo: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    cache_dir: str | None = None
    s3_endpoint: str | None = None
    lock_wait: float | None = None
    jobs: int = 0
    connections: int = 0
    s3_storage_class: str | None = None
    no_lock: bool = False  # read-only commands skip their shared lock (a read-only repository)
    extra: dict = field(default_factory=dict)

    def resolved(self) -> "Settings":
        """A copy with every unset field filled from the environment or the default."""
        env = os.environ
        return Settings(
            repo=self.repo or env.get("VAULT_REPOSITORY") or None,
            password_file=self.password_file,
            password_command=self.password_command,
            cache_dir=self.cache_dir or env.get("VAULT_CACHE_DIR") or default_cache_dir(),
            s3_endpoint=self.s3_endpoint or env.get("VAULT_S3_ENDPOINT") or None,
            lock_wait=DEFAULT_LOCK_WAIT if self.lock_wait is None else self.lock_wait,
            jobs=self.jobs or _int_env("VAULT_JOBS", 0, 256),
            connections=self.connections or _int_env("VAULT_CONNECTIONS", 1, 256) or DEFAULT_CONNECTIONS,
            s3_storage_class=self.s3_storage_class or env.get("VAULT_S3_STORAGE_CLASS") or None,
            no_lock=self.no_lock,
            extra=dict(self.extra),
        )

    def connection_count(self) -> int:
        """``connections``, or the default when unset (settings not ``resolved``)."""
        return self.connections or DEFAULT_CONNECTIONS

    def effective_s3_endpoint(self) -> str | None:
        """The S3 endpoint in use: ours, else boto3's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
        env = os.environ
        return self.s3_endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None

    def require_repo(self) -> str:
        repo = self.repo or os.environ.get("VAULT_REPOSITORY")
        if not repo:
            raise UsageError("no repository given: use --repo URL or set VAULT_REPOSITORY")
        return repo


def _int_env(name: str, low: int, high: int) -> int:
    """An integer setting from the environment, 0 when unset or empty; a usage error when it is not a whole
    number in [low, high] (as the command-line option would be)."""
    v = os.environ.get(name, "").strip()
    if not v:
        return 0
    if not (v.isascii() and v.isdigit()) or not low <= int(v) <= high:
        raise UsageError(f"{name}={v!r} is not a whole number from {low} to {high}")
    return int(v)


def _another_users(path: str) -> bool:
    """Run as root: whether ``path`` or a directory above it belongs to another user -- on the way to it (a
    symlink there, too: its owner can point it elsewhere) and where it really is. ``sudo`` without
    ``-H`` keeps the user's HOME: a root vault made its cache in a home that user can rename things in (and read
    the file names through a swapped directory), and the user's own ``.cache`` root's."""
    if os.geteuid() != 0:
        return False
    for p, look in ((os.path.abspath(path), os.lstat), (os.path.realpath(path), os.stat)):
        while True:
            try:
                if look(p).st_uid != 0:
                    return True
            except OSError:  # (missing: the directories above it count)
                pass
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
    return False


def _home() -> str:
    """$HOME when it is an absolute path (for root: its own), else the user's home in the password database: an
    empty or relative HOME (``HOME= vault ...``, a stripped-down cron or container environment) put the cache in
    /.cache or below wherever the command ran."""
    home = os.environ.get("HOME", "")
    if os.path.isabs(home) and not _another_users(home):
        return home
    try:
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):
        home = ""
    if not os.path.isabs(home):
        raise UsageError("no place for the local catalog: HOME is not an absolute path and this user has no home "
                         "directory; give --cache-dir DIR (or VAULT_CACHE_DIR)")
    return home


def default_cache_dir() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec: a relative value is invalid and ignored (it would put the cache wherever the command runs)
    base = xdg if os.path.isabs(xdg) and not _another_users(xdg) else os.path.join(_home(), ".cache")
    return os.path.join(base, "vault")


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


MAX_PASSWORD = 64 * 1024  # longer is not a password (a password file pointed at /dev/zero or a disk image)


def _read_password_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSWORD + 1)
    except OSError as exc:
        raise NoPassword(f"cannot read password file {path}: {exc.strerror}") from None
    if len(data) > MAX_PASSWORD:
        raise NoPassword(f"password file {path} is longer than {MAX_PASSWORD // 1024} KiB: not a password file")
    return _strip_newline(data)


def _run_password_command(cmd: str, timeout: float = 120.0) -> bytes:
    """The command's output, once it has exited: a background process it left holding the output open is not
    waited for. The command line is not repeated in messages (it may hold a secret), only the program's name."""
    try:
        argv = shlex.split(cmd)
        if not argv:  # (' ': Popen([]) is an IndexError -- it was an internal error)
            raise ValueError("it is empty")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except ValueError as exc:
        raise NoPassword(f"password command could not run: {exc}") from None
    except OSError as exc:  # name the program (under cron's PATH=/usr/bin:/bin one in /usr/local/bin is not found)
        where = ""
        if isinstance(exc, FileNotFoundError):
            found = argv[0] if "/" in argv[0] else shutil.which(argv[0])
            where = (f" (not found in PATH={os.environ.get('PATH', os.defpath)})" if found is None else
                     " (is the interpreter on its '#!' line missing?)" if os.path.exists(found) else "")
        raise NoPassword(f"password command {argv[0]!r} could not run: {exc.strerror or exc}{where}") from None
    try:
        return _password_output(proc, timeout)
    except BaseException:  # (Ctrl-C, SIGTERM: vault stops, and does not leave the command running on its own)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def _password_output(proc: subprocess.Popen, timeout: float) -> bytes:
    fd = proc.stdout.fileno()
    out: list[bytes] = []
    total = 0
    deadline = time.monotonic() + timeout
    timed_out = False
    while total <= MAX_PASSWORD:
        if select.select([fd], [], [], 0.05)[0]:
            piece = os.read(fd, 65536)
            if not piece:
                break  # end of output
            out.append(piece)
            total += len(piece)
        elif proc.poll() is not None:
            break  # exited, and what it wrote is read: a child it left may hold the pipe open
        elif time.monotonic() > deadline:
            timed_out = True
            break
    if total > MAX_PASSWORD or timed_out:
        proc.kill()  # more than any password (it may be blocked writing the rest), or too slow
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # closed its output, still running
        proc.kill()
        proc.wait()
        timed_out = True
    proc.stdout.close()
    if timed_out:
        raise NoPassword(f"password command did not finish within {timeout:.0f} s")
    if total > MAX_PASSWORD:
        raise NoPassword(f"password command printed more than {MAX_PASSWORD // 1024} KiB: not a password")
    if proc.returncode != 0:
        raise NoPassword(f"password command exited with status {proc.returncode}")
    return _strip_newline(b"".join(out))


def get_password(settings: Settings, prompt: Callable[[str], str] | None, what: str = "repository password",
                 confirm: bool = False) -> bytes:
    """The password from the first source that is set; ``prompt`` only when no source is set."""
    env = os.environ
    if settings.password_file:
        pw = _read_password_file(settings.password_file)
    elif settings.password_command:
        pw = _run_password_command(settings.password_command)
    elif env.get("VAULT_PASSWORD_FILE"):
        pw = _read_password_file(env["VAULT_PASSWORD_FILE"])
    elif env.get("VAULT_PASSWORD_COMMAND"):
        pw = _run_password_command(env["VAULT_PASSWORD_COMMAND"])
    elif "VAULT_PASSWORD" in env:
        pw = os.fsencode(env["VAULT_PASSWORD"])
    elif prompt is not None:
        pw = os.fsencode(prompt(f"Enter {what}: "))
        if confirm and os.fsencode(prompt(f"Repeat {what}: ")) != pw:
            raise NoPassword("the passwords do not match")
    else:
        raise NoPassword("no password given: set VAULT_PASSWORD, VAULT_PASSWORD_FILE or VAULT_PASSWORD_COMMAND "
                         "(or use --password-file); there is no terminal to ask on")
    if not pw:
        raise NoPassword("empty password")
    return pw


def get_second_password(settings: Settings, role: str, source_file: str | None, source_command: str | None,
                        prompt: Callable[[str], str] | None) -> bytes:
    """The password of a second repository (``role`` "TO" for copy, "FROM" for repair --from-repo):
    --{to,from}-password-file / -command, VAULT_{ROLE}_PASSWORD_FILE / _COMMAND / VAULT_{ROLE}_PASSWORD; when none
    is set, the first repository's password sources (the same password, other keys)."""
    env = os.environ
    if source_file:
        return _read_password_file(source_file) or _empty()
    if source_command:
        return _run_password_command(source_command) or _empty()
    if env.get(f"VAULT_{role}_PASSWORD_FILE"):
        return _read_password_file(env[f"VAULT_{role}_PASSWORD_FILE"]) or _empty()
    if env.get(f"VAULT_{role}_PASSWORD_COMMAND"):
        return _run_password_command(env[f"VAULT_{role}_PASSWORD_COMMAND"]) or _empty()
    if f"VAULT_{role}_PASSWORD" in env:
        return os.fsencode(env[f"VAULT_{role}_PASSWORD"]) or _empty()
    return get_password(settings, prompt, what=f"password of the {'destination' if role == 'TO' else 'second'} "
                                                "repository")


def _empty() -> bytes:
    raise NoPassword("empty password")


def get_new_password(source_file: str | None, prompt: Callable[[str], str] | None) -> bytes:
    """The new password for ``key add``/``key passwd``: --new-password-file, VAULT_NEW_PASSWORD(_FILE), prompt."""
    env = os.environ
    if source_file:
        pw = _read_password_file(source_file)
    elif env.get("VAULT_NEW_PASSWORD_FILE"):
        pw = _read_password_file(env["VAULT_NEW_PASSWORD_FILE"])
    elif "VAULT_NEW_PASSWORD" in env:
        pw = os.fsencode(env["VAULT_NEW_PASSWORD"])
    elif prompt is not None:
        pw = os.fsencode(prompt("Enter new password: "))
        if os.fsencode(prompt("Repeat new password: ")) != pw:
            raise NoPassword("the passwords do not match")
    else:
        raise NoPassword("no new password given: use --new-password-file, or set VAULT_NEW_PASSWORD_FILE or "
                         "VAULT_NEW_PASSWORD")
    if not pw:
        raise NoPassword("empty password")
    return pw


__all__ = ["Settings", "get_password", "get_second_password", "get_new_password", "default_cache_dir",
           "bytecode_disabled_by_environment"]


def bytecode_disabled_by_environment() -> bool:
    """PYTHONDONTWRITEBYTECODE is set (not merely ``python -B``): the console script then keeps its own bytecode
    cache anyway (see ``vault.cli``)."""
    return bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))


def use_utc_if_zone_unusable() -> str | None:
    """glibc takes a TZ offset of a day or more (``TZ=UTC+24``); Python's tzinfo refuses it, and every local time
    failed (listing snapshots, forget and find were internal errors, ``--at`` "cannot parse"): TZ is set to UTC
    for this process, and the reason returned to be said."""
    import datetime

    try:
        datetime.datetime.now().astimezone()
        return None
    except (ValueError, OverflowError, OSError):
        zone = os.environ.get("TZ", "")
        os.environ["TZ"] = "UTC"
        time.tzset()
        return (f"the local time zone (TZ={zone}) has an offset of a day or more, which vault cannot use: times are "
                "shown and read in UTC")
