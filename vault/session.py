"""Opening a repository for a command: its backend, the password check, the lock, the local catalog (synced).

``session`` is what every ``api`` function runs in; ``other_session`` opens a second repository (copy's
destination, repair's --from-repo) with failures naming it. The catalog's directory for a repository is keyed by
where the repository is (``_store_location``), and the key slot that opened it last is remembered there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .backend import open_backend, parse_url
from .backend.retry import RetryBackend
from .cachedir import read_small, write_small
from .catalog import OPEN_WAIT, Catalog, SyncReport, open_synced, store_key
from .config import Settings
from .errors import CatalogError, PermanentError, RepositoryLocked, RepositoryNotFound, UsageError, WrongPassword
from .locks import Lock, on_this_machine, process_gone, process_start, this_process
from .repository import Repository

PasswordFn = Callable[[], bytes]
DAY = 86400.0
_running: set[str] = set()  # the run marks of this process's commands still running (a library user may run
#                             several, one after another or side by side, in one long-lived process)


def _ended(token: str, host: str, pid: int, boot: str, pid_ns: str, pid_start: str, started: float,
           now: float) -> bool:
    """Whether the run so marked has ended: on this machine (same boot and PID namespace), its process is gone
    (its pid dead, or another process's now: the start differs) or, for this process, the run is not among
    those still going; elsewhere (another host sharing the cache, another PID namespace: a container), only
    judged by age -- a day."""
    if on_this_machine(host, boot, pid_ns):
        if pid_start and process_start(pid) != pid_start:
            return True
        if pid == os.getpid():
            return token not in _running
        return process_gone(host, pid, boot, pid_ns)
    return process_gone(host, pid, boot, pid_ns) or started < now - DAY


@dataclass
class Session:
    repo: Repository
    catalog: Catalog
    sync: SyncReport
    counter: RetryBackend
    lock: Lock | None = None
    run_token: str | None = None  # this command's mark in the catalog while it stores packs (``begin_storing``)
    run_covered: list[str] = field(default_factory=list)  # the marks of ended runs its listing covers

    def check_lock(self) -> None:
        if self.lock is not None:
            self.lock.check()

    def begin_storing(self) -> bool:
        """Mark this command, about to store packs, as running (in this machine's catalog); whether packs that no
        index segment names may be in the repository, to be looked for and adopted: another run's lock says so
        (a killed run leaves its lock behind: ``Lock.others_may_have_left_packs``; True without a lock: nothing is
        known), or a run on this machine was marked and never finished (an error, a worker process killed, a
        kill whose lock was removed since by an exclusive command or 'vault unlock'). Else no listing of every
        pack (O(packs) requests: minutes for a big S3 repository) before the first file is read. The marks of
        runs that had ended by now are covered by this run's listing: ``end_storing`` removes them."""
        earlier = self.catalog.run_marks()
        now = time.time()
        self.run_covered = [m[0] for m in earlier if _ended(*m, now=now)]
        self.run_token = secrets.token_hex(8)
        self.catalog.run_mark(self.run_token, (*this_process(), process_start(os.getpid())), now)
        _running.add(self.run_token)
        return self.lock is None or self.lock.others_may_have_left_packs() or bool(earlier)

    def end_storing(self) -> None:
        """Every pack this command stored is named in an index segment: its mark goes, with the marks of the runs
        that had ended when it began (it looked for their packs then). Not those of runs still going then: one
        may have stored more and failed since. A catalog that cannot be written now only costs the next run a
        listing (the snapshot is written: not this command's failure)."""
        try:
            self.catalog.run_unmark([self.run_token, *self.run_covered])
        except CatalogError:
            pass
        _running.discard(self.run_token)
        self.run_token = None

    def requests(self) -> dict:
        return self.counter.inner.stats()


def open_store(settings: Settings) -> RetryBackend:
    """The repository's backend: retries above a request counter above the store (every attempt counted)."""
    return open_backend(settings.require_repo(), settings.s3_endpoint, settings.connection_count(),
                        settings.s3_storage_class, count=True)


# what --no-lock may run without its shared lock: what only reads the repository (copy's source and the
# repository repair --from-repo heals from are read only too: a read-only mount or S3 credentials can feed them)
_READ_ONLY = {"ls", "find", "diff", "restore", "verify", "dump", "copy (source)", "repair (source)"}


@contextlib.contextmanager
def session(settings: Settings, password: PasswordFn, lock: str | None = None, operation: str = "",
            sync: bool = True, before_catalog: Callable[[Repository], None] | None = None,
            not_id: tuple[str, str] | None = None) -> Iterator[Session]:
    """Open the repository (verify the password), optionally lock it, open and sync the catalog.

    ``before_catalog(repo)`` runs before this process opens the catalog (backup forks its workers there).
    ``not_id``: (repository id, message): a UsageError with the message when this is that repository, before
    its lock is asked for (a second session on the first one's repository would wait for its own lock)."""
    counter = open_store(settings)
    keys: dict[str, str] = {}

    def key_of(repo_id: str) -> str:  # (the catalog's directory: looked up once a command, see store_key)
        if repo_id not in keys:
            keys[repo_id] = cache_key(settings, repo_id)
        return keys[repo_id]

    repo = Repository.open(counter, password, first_slot=lambda rid: _slot_hint(settings, key_of, rid))
    if not_id is not None and repo.id == not_id[0]:
        counter.close()
        raise UsageError(not_id[1])
    _remember_slot(settings, key_of, repo)
    held = None
    if lock == "shared" and operation in _READ_ONLY and settings.no_lock:
        lock = None  # --no-lock: a read-only repository (a prune running meanwhile can make this fail)
    if lock is not None:
        try:
            held = Lock(counter, exclusive=(lock == "exclusive"), operation=operation, wait=settings.lock_wait or 0)
        except PermanentError as exc:  # a full or read-only repository cannot take a lock object
            if lock == "shared" and operation in _READ_ONLY:
                raise type(exc)(f"{exc} (cannot take the repository lock; {operation.split(' (')[0]} can read it "
                                "without one: --no-lock)") from None
            raise
    try:
        if before_catalog is not None:
            before_catalog(repo)
        if sync:
            catalog, report = open_synced(settings.cache_dir, repo, wait=_catalog_wait(settings), key=key_of(repo.id),
                                          prefetch=prefetch_width(settings))
        else:
            catalog = Catalog.open(settings.cache_dir, key_of(repo.id), wait=_catalog_wait(settings))
            catalog.prefetch, report = prefetch_width(settings), SyncReport()
        sess = Session(repo, catalog, report, counter, held)
        try:
            yield sess
        finally:
            if sess.run_token is not None:  # (ended without naming every pack it stored: its mark stays)
                _running.discard(sess.run_token)
            catalog.close()
    finally:
        if held is not None:
            held.release()
        counter.close()


def _store_location(settings: Settings) -> str:
    """Where the repository is, canonical: its real path, or bucket, prefix and endpoint."""
    scheme, loc = parse_url(settings.require_repo())
    if scheme == "file":  # (and the file system it is on: two cloned disks rotated at one mount point differ)
        real = probe = os.path.realpath(loc)
        while True:
            try:
                fsid = os.statvfs(probe).f_fsid
                break
            except OSError:  # (not made yet, init: the file system it will be on)
                if os.path.dirname(probe) == probe:
                    fsid = 0
                    break
                probe = os.path.dirname(probe)
        return f"{real} on file system {fsid:x}" if fsid else real
    endpoint = settings.effective_s3_endpoint()
    if endpoint:  # (http://Host:9000/ and http://host:9000 are one endpoint: one catalog, not two)
        from urllib.parse import urlsplit

        parts = urlsplit(endpoint.strip())
        endpoint = f"{parts.scheme.lower()}://{(parts.netloc or parts.path).lower()}{parts.path.rstrip('/') if parts.netloc else ''}"
    return f"s3://{loc}" + (f" at {endpoint}" if endpoint else "")


def cache_key(settings: Settings, repo_id: str) -> str:
    """The catalog's directory under the cache directory (``catalog.store_key``)."""
    return store_key(settings.cache_dir, repo_id, _store_location(settings))


def prefetch_width(settings: Settings) -> int:
    """``Catalog.prefetch``: a remote repository's manifests, segments and trees are fetched side by side."""
    return 0 if local_repo_path(settings) else min(settings.connection_count(), 8)


def _slot_file(settings: Settings, key_of: Callable[[str], str], repo_id: str) -> str:
    return os.path.join(settings.cache_dir, key_of(repo_id), "key-slot")


def _slot_hint(settings: Settings, key_of: Callable[[str], str], repo_id: str) -> str | None:
    """The key slot that opened this repository last time (a hint: it only decides which slot is tried first)."""
    try:
        data = read_small(_slot_file(settings, key_of, repo_id), 100)
        return data.decode("ascii").strip() or None if data is not None else None
    except (OSError, ValueError, CatalogError):
        return None


def _remember_slot(settings: Settings, key_of: Callable[[str], str], repo: Repository) -> None:
    if _slot_hint(settings, key_of, repo.id) == repo.key_name:
        return
    try:
        write_small(_slot_file(settings, key_of, repo.id), repo.key_name.encode("ascii"))
    except (OSError, CatalogError):  # a read-only, full or unsafe cache: the catalog's open says so
        pass


def _catalog_wait(settings: Settings) -> float:
    """How long to wait for the local catalog's opening lock: --lock-wait, but never under 5 s (another
    process holds it for milliseconds; only a stopped or hung one holds it longer)."""
    return max(5.0, settings.lock_wait if settings.lock_wait is not None else OPEN_WAIT)


def local_repo_path(settings: Settings) -> str | None:
    scheme, loc = parse_url(settings.require_repo())
    return loc if scheme == "file" else None


@contextlib.contextmanager
def naming(role: str, url: str = "") -> Iterator[None]:
    """Failures to open a second repository say which one it is (same exception class: same exit code); the
    advice to unlock names it too (a bare 'vault unlock' would unlock the first)."""
    try:
        yield
    except (WrongPassword, RepositoryNotFound, RepositoryLocked, PermanentError) as exc:  # (the last: read-only)
        text = str(exc).replace("'vault unlock'", f"'vault --repo {url} unlock'") if url else str(exc)
        raise type(exc)(f"{role}: {text}") from None


@contextlib.contextmanager
def other_session(role: str, settings: Settings, password: PasswordFn, **kw) -> Iterator[Session]:
    """``session`` on a second repository (copy's destination, repair's --from-repo), its opening failures
    naming ``role``."""
    cm = session(settings, password, **kw)
    with naming(role, settings.repo):
        sess = cm.__enter__()
    with contextlib.ExitStack() as stack:
        stack.push(cm)
        yield sess
