"""flock(2) locks on files of the local cache, between the vault processes (and threads) sharing a cache directory.

The catalog uses two: a short exclusive one around opening it (creating its tables, or replacing a damaged
catalog, is done by one process at a time), and a shared one held while it is open, which must be taken
exclusively to remove the catalog, so that no process removes a catalog another one is using. The kernel drops
these locks when a process dies (a SIGKILL leaves nothing to clean up). Each lock has its own descriptor, so two
users in one process conflict exactly as two processes would (not on NFS, where Linux emulates flock with
per-process POSIX locks: there only other processes are kept out). On a filesystem without flock (some network
and FUSE mounts) the locks are no-ops and every upgrade succeeds: the behaviour of a single user."""

from __future__ import annotations

import errno
import fcntl
import os
import time

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _flock(fd: int, op: int) -> None:
    try:
        fcntl.flock(fd, op)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise


class FileLock:
    def __init__(self, path: str, shared: bool = False, wait: float | None = None):
        """Wait for and take the lock on ``path`` (created if missing); with ``wait``, for at most that many
        seconds, then BlockingIOError (a holder that is stopped or hung never blocks us for ever)."""
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            if wait is None:
                _flock(self._fd, op)
            else:
                deadline, delay = time.monotonic() + wait, 0.005
                while True:
                    try:
                        _flock(self._fd, op | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise
                        time.sleep(min(delay, left))
                        delay = min(delay * 2, 0.25)
        except BaseException:
            os.close(self._fd)
            raise

    def try_exclusive(self) -> bool:
        """Shared -> exclusive when nobody else holds the lock; on False the lock is held shared again (a failed
        conversion drops the shared lock, so it is taken again before returning)."""
        try:
            _flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            _flock(self._fd, fcntl.LOCK_SH)
            return False

    def share(self) -> None:
        """Exclusive -> shared (nothing conflicts with a shared lock, so no other user slips in between)."""
        _flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["FileLock"]
