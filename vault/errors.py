"""The one error tree. Every class carries the process exit code the CLI uses for it.

The library raises these and never prints or exits; ``vault.cli`` catches ``VaultError`` in one place.
Foreign errors (OSError, botocore) are translated at the boundary that sees them (the backends).
"""

from __future__ import annotations

import errno

# errno values that are this machine's limits (descriptors, memory), never a file's or the repository's: an
# operation meeting one stops (exit 1, the limit named) instead of naming each file or listing it could not read
MACHINE_LIMITS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class VaultError(Exception):
    """Root of every error vault raises on purpose. ``exit_code`` is the documented process exit code."""

    exit_code = 1


class UsageError(VaultError):
    """Bad input the user can fix: malformed URL, unknown snapshot, bad time, nonexistent source path."""

    exit_code = 2


class RepositoryNotFound(VaultError):
    exit_code = 10


class RepositoryExists(VaultError):
    exit_code = 1


class RepositoryLocked(VaultError):
    exit_code = 11


class WrongPassword(VaultError):
    exit_code = 12


class NoPassword(VaultError):
    exit_code = 1


class DamageFound(VaultError):
    """Verify or restore found damaged or missing data. Carries the report."""

    exit_code = 20

    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


class IntegrityError(VaultError):
    """One object failed its hash/authentication check or is malformed (hostile or damaged content)."""

    exit_code = 20


class LockLost(VaultError):
    """Our lock vanished or went stale while we held it: stop before committing anything."""


class PruneRefused(VaultError):
    """Prune cannot prove what is unreferenced; nothing was changed."""


class StoreFailed(VaultError):
    """A block could not be handed to the pack writer (its memory or /dev/zero failed): the backup stops."""


class SnapshotNotFound(VaultError):
    """No snapshot matches the id, prefix, ``latest`` or ``--at`` given (or the prefix is ambiguous)."""

    exit_code = 1


class SourceNotFound(VaultError):
    """None of the paths given to ``backup`` exists."""

    exit_code = 1


class CatalogError(VaultError):
    exit_code = 1


class CacheUnavailable(CatalogError):
    """The cache directory cannot be used now (its disk is full, or fails): the catalog is not damaged and is
    never deleted or rebuilt for that."""


class CatalogInUse(CatalogError):
    """The catalog must be replaced (damaged, outdated, or a rebuild was asked for) while another vault process
    has it open: left alone, exit 1 (``catalog rebuild`` waits up to --lock-wait for the others first)."""


class CatalogBusy(CacheUnavailable):
    """Another vault process held the local catalog (its opening lock, or a write to the database) for longer
    than this one would wait (it is stopped, or hung): exit 11, as for a repository lock. Not damage."""
    exit_code = 11


class BackendError(VaultError):
    """Something went wrong talking to the store."""

    exit_code = 1


class ObjectNotFound(BackendError):
    """The named object does not exist in the store."""


class ObjectExists(BackendError):
    """A create-only write found the name already taken."""


class TransientError(BackendError):
    """A failure worth retrying (timeouts, resets, throttling, 5xx)."""


class CorruptResponse(TransientError):
    """The store sent bytes that fail its own checksum: retried (a network fault), then taken as damage."""


class TruncatedResponse(TransientError):
    """A response cut short (a listing or a body shorter than it says, a head cut in two): retried, and never
    evidence against the data -- the network failed, whatever the bytes that did arrive look like."""


class PermanentError(BackendError):
    """A failure retrying cannot fix (permission denied, no such bucket, disk full)."""


class AccessDenied(PermanentError):
    """The store refused the request (403: credentials, bucket policy)."""


def is_damage(exc: VaultError) -> bool:
    """Whether a failed read is evidence against the repository's data (missing, malformed, failing its
    check, an I/O error of the store's disk) or only says it could not be read now (this machine's limits,
    permissions, a network that stayed down through the retries): the latter is an error (exit 1), never
    reported as damage (exit 20)."""
    if isinstance(exc, CatalogError):  # this machine's cache failed, not the repository: never damage (a
        return False                   # repair would drop every file below a tree it could not look up)
    return isinstance(exc, CorruptResponse) or not isinstance(exc, (PermanentError, TransientError))


class VaultWarning(UserWarning):
    """Something the user should hear of that does not stop the command (the CLI prints it on stderr as
    ``vault: warning: ...``; a library caller sees it through the ``warnings`` module)."""
