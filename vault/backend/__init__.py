"""Storage backends and ``open_backend(url)``.

Repository URLs:

* a path, relative or absolute (``/srv/repo``, ``backups/repo``): a local directory;
* ``file://PATH`` (``file:///srv/repo``): the same, PATH taken literally (no %-decoding; ``file://localhost/p``
  is ``/p``, RFC 8089);
* ``s3://BUCKET[/PREFIX]``: an S3 bucket, served by ``vault.backend.s3.S3Backend(bucket, prefix)`` when that
  module exists.

Anything else that looks like ``scheme:...`` is refused with a UsageError (write ``./name:with:colons`` for a
local path containing a colon). The FaultBackend test double lives in ``vault.backend.faults``.
"""

from __future__ import annotations

import re

from vault.backend.base import Backend, check_name, check_prefix
from vault.backend.counting import CountingBackend
from vault.backend.local import LocalBackend
from vault.backend.memory import MemoryBackend
from vault.backend.retry import RetryBackend
from vault.errors import UsageError, VaultError

__all__ = [
    "Backend",
    "CountingBackend",
    "LocalBackend",
    "MemoryBackend",
    "RetryBackend",
    "check_name",
    "open_backend",
    "parse_url",
]

# Two or more letters so a Windows drive (C:\repo) still reads as a path.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FORMS = "use a path, file://PATH or s3://BUCKET[/PREFIX]"


def parse_url(url: str) -> tuple[str, str]:
    """Split a repository URL into (scheme, location): ``("file", path)`` or ``("s3", "bucket[/prefix]")``.

    Raises UsageError, naming the URL, for anything malformed or unsupported."""
    if not isinstance(url, str) or not url:
        raise UsageError(f"empty repository URL {url!r}: {_FORMS}")
    if "\0" in url:
        raise UsageError(f"invalid repository URL {url!r}: contains a NUL byte")
    match = _SCHEME.match(url)
    if not match:
        return "file", url
    scheme = match.group(1).lower()
    rest = url[match.end() :]
    if scheme not in ("file", "s3"):
        raise UsageError(f"unsupported repository URL {url!r}: {_FORMS}")
    if not rest.startswith("//"):
        raise UsageError(f"malformed repository URL {url!r}: expected {scheme}://...")
    rest = rest[2:]
    if scheme == "file":
        if rest.startswith("localhost/"):  # (RFC 8089: file://localhost/p is file:///p)
            rest = rest[len("localhost"):]
        if not rest:
            raise UsageError(f"malformed repository URL {url!r}: no path after file://")
        return "file", rest
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.match(bucket):
        raise UsageError(f"malformed repository URL {url!r}: expected s3://BUCKET[/PREFIX]")
    if prefix:
        try:
            check_prefix(prefix)
        except ValueError:
            raise UsageError(f"malformed repository URL {url!r}: invalid prefix {prefix!r}") from None
    return "s3", f"{bucket}/{prefix}" if prefix else bucket


def _open_s3(location: str, endpoint: str | None, connections: int, storage_class: str | None) -> Backend:
    try:
        from vault.backend.s3 import S3Backend
    except ModuleNotFoundError as err:  # (boto3, or a module it needs, is not installed)
        raise VaultError(f"an S3 repository needs boto3, which cannot be loaded here ({err.name or err} is "
                         "missing): pip install boto3") from None
    bucket, _, prefix = location.partition("/")
    return S3Backend(bucket, prefix, endpoint=endpoint, connections=connections, storage_class=storage_class)


def open_backend(url: str, s3_endpoint: str | None = None, connections: int = 8,
                 s3_storage_class: str | None = None, count: bool = False) -> Backend:
    """Open the backend a repository URL names, wrapped in a RetryBackend. The store need not exist yet.

    With ``count``, a CountingBackend sits between the retries and the store, so every attempt is counted
    (``backend.inner.stats()``): what a cloud bill counts."""
    scheme, location = parse_url(url)
    inner: Backend = (_open_s3(location, s3_endpoint, connections, s3_storage_class) if scheme == "s3"
                      else LocalBackend(location))
    return RetryBackend(CountingBackend(inner) if count else inner)
