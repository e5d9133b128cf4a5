"""S3 backend: a repository under ``s3://BUCKET[/PREFIX]`` on AWS or any S3-compatible store (boto3).

What it guarantees, on top of ``backend.base``:

* **Only keys under ``PREFIX/``** are ever read, written, listed or deleted.
* **Atomic, create-only writes.** One PUT (or a completed multipart upload, for objects over
  ``MULTIPART_THRESHOLD``) makes an object appear whole. ``If-None-Match: *`` makes creation conditional where
  the store supports it (AWS, MinIO, moto); a store that answers 501 is detected once and served with a
  HEAD-then-PUT instead. A failed multipart upload is aborted. Bodies carry a checksum (boto3's default
  CRC32 / Content-MD5), so a body damaged on the wire is refused by the store.
* **Errors are ours.** Throttling (503 SlowDown), 5xx, timeouts and connection resets become
  ``TransientError`` (``RetryBackend`` retries them with backoff and jitter; botocore's own retries are off so
  the two do not multiply); 403 and missing credentials become ``PermanentError`` (fail fast); a missing key
  or bucket becomes ``ObjectNotFound``.
* **Load spreading.** One client with a connection pool of ``connections`` is shared by every thread.

Endpoint: the ``endpoint`` argument (``--s3-endpoint`` / ``VAULT_S3_ENDPOINT``), else boto3's own
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. Credentials and region: the standard AWS chain. A custom
endpoint uses path-style addressing (what MinIO and most S3-compatible stores want).
"""

from __future__ import annotations

import base64
import contextlib
import io
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import boto3
import botocore.config
import botocore.handlers
import urllib3.exceptions
from botocore.exceptions import (BotoCoreError, ClientError, ConfigParseError, ConnectionError as BotoConnectionError,
                                 CredentialRetrievalError, FlexibleChecksumError, HTTPClientError,
                                 IncompleteReadError, InvalidConfigError, InvalidRegionError, NoCredentialsError,
                                 PartialCredentialsError, ProfileNotFound)

from ..errors import (AccessDenied, BackendError, CorruptResponse, ObjectExists, ObjectNotFound, PermanentError,
                      TransientError, TruncatedResponse, UsageError)
from .base import STORE_CONTENT, check_name, check_prefix, exists_by_size
from .retry import retry_transient

MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
# A multipart upload's own requests (parts, complete, abort) are retried here, each on its own: RetryBackend
# can only redo the whole put, and one upload is many requests, so under a steady rate of transient failures
# whole-put retries alone would rarely get one through (and each failed try would leave parts behind).
SUB_ATTEMPTS = 6
SUB_BASE_DELAY = 0.2
SUB_MAX_DELAY = 10.0
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
                    "ThrottlingException", "RequestTimeTooSkewed", "OperationAborted", "BadDigest",
                    "IncompleteBody", "XAmzContentSHA256Mismatch", "InvalidDigest"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
#: Storage classes whose objects cannot be read without a restore request (vault reads packs at any time).
_ARCHIVE_CLASSES = {"GLACIER", "DEEP_ARCHIVE"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                 "AccountProblem", "InvalidToken", "ExpiredToken", "403"}


def _checked_body(resp: dict, body: bytes, offset: int, length: int | None, what: str) -> bytes:
    """A GET's body, checked to be what the response promised: as long as its Content-Length (a connection
    closed inside the head gave a 200 with no length and no body, read as an empty object; a chunked body
    without one is framed by its chunks, which urllib3 checks) and, for a range, the range asked for (or the
    part of it the object holds). TruncatedResponse (retried, never damage) otherwise. A store that ignores
    Range and sends the whole object (200, no Content-Range) is served by slicing it."""
    declared = resp.get("ContentLength")
    headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    chunked = "chunked" in str(headers.get("transfer-encoding", "")).lower()
    if (declared is None and not chunked) or (declared is not None and len(body) != int(declared)):
        raise TruncatedResponse(f"S3 {what}: the response was cut short ({len(body)} bytes, Content-Length "
                                f"{declared})")
    if offset or length is not None:
        span = resp.get("ContentRange") or ""  # "bytes START-END/TOTAL"
        if not span and resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:
            return body[offset:] if length is None else body[offset : offset + length]
        try:
            first, _, total = span.removeprefix("bytes ").partition("/")
            start, _, end = first.partition("-")
            start, end, total = int(start), int(end), int(total)
        except ValueError:
            raise TruncatedResponse(f"S3 {what}: a ranged read without a valid Content-Range ({span!r})") from None
        want = (total - offset) if length is None else min(length, total - offset)
        if start != offset or end - start + 1 != len(body) or len(body) != want:
            raise TruncatedResponse(f"S3 {what}: asked for bytes {offset}+{length}, got {span} ({len(body)} bytes)")
    return body


def _redirects(what: str) -> str:
    return (f"S3 {what}: the endpoint answers with redirects that lead nowhere (HTTP 301/307 with no bucket region): "
            "check its scheme (https://?) and the bucket's region")


def _whole_pages(pages: Iterator[dict], what: str) -> Iterator[dict]:
    """The pages of a listing, each checked to be whole, the last one to say nothing more follows.

    A listing cut short (the connection closed inside its head) parses as an empty 200: never "no objects"
    (prune would delete everything) -- a real page always says whether more follow. And botocore's paginator
    stops at a page that says more follows but gives no token to ask for it (a store answering V2 the V1 way):
    never the end of the listing. TruncatedResponse (retried, never damage) otherwise."""
    more = True  # (no page at all: cut short too)
    for page in pages:
        if "IsTruncated" not in page:
            raise TruncatedResponse(f"S3 {what}: the listing was cut short (a page without IsTruncated)")
        more = page["IsTruncated"]
        yield page
    if more:
        raise TruncatedResponse(f"S3 {what}: the listing stopped at a page that says more follows")


class _ViewBody(io.RawIOBase):
    """A request body read from a buffer in place (a pack's mapping), seekable for botocore's own rewinds.
    Closing it releases its view of the buffer: the caller may close the mapping under it."""

    def __init__(self, data: bytes | memoryview) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = max(0, min(len(b), len(self._view) - self._pos))
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"invalid whence {whence}")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._view.release()
        super().close()


class S3Backend:
    def __init__(self, bucket: str, prefix: str = "", endpoint: str | None = None, connections: int = 8,
                 storage_class: str | None = None, region: str | None = None, path_style: bool | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_prefix(self.prefix)
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.on_page: Callable[[], None] | None = None  # called for each page a listing fetches (CountingBackend)
        if storage_class and storage_class.upper() in _ARCHIVE_CLASSES:
            raise UsageError(f"--s3-storage-class {storage_class}: packs in an archive class cannot be read without "
                             "a restore request first (restore, verify, prune and backup's deduplication read "
                             "them); use STANDARD_IA, ONEZONE_IA or GLACIER_IR")
        self.storage_class = storage_class
        config = botocore.config.Config(
            max_pool_connections=max(4, connections + 4),
            retries={"total_max_attempts": 1},  # RetryBackend retries, with backoff and jitter
            # an endpoint that accepts connections and then says nothing fails each attempt after 20 s (the
            # run after ~2 minutes of retries), not 120 s (12 minutes); a byte every 20 s is slow enough
            connect_timeout=10, read_timeout=20, tcp_keepalive=True,
            # payload_signing_enabled=False: no SHA-256 of every body for the signature. botocore already skips
            # it over https; over plain http (MinIO on a LAN, moto) it cost ~3 CPU-s per GB. The body is still
            # protected by its CRC32 (checked by the store), and packs are named by their SHA-256.
            s3={"addressing_style": "path" if (path_style or (path_style is None and endpoint)) else "auto",
                "payload_signing_enabled": False},
        )
        try:
            session = boto3.session.Session()
            self._s3 = session.client("s3", endpoint_url=endpoint or None, config=config,
                                      region_name=region or session.region_name or "us-east-1")
        except InvalidRegionError as exc:
            raise UsageError(f"bad AWS region: {exc}") from None
        except ValueError as exc:  # botocore: "Invalid endpoint: not-a-url"
            raise UsageError(f"bad S3 endpoint {endpoint!r}: use a URL such as https://s3.example.com "
                             f"({exc})") from None
        except BotoCoreError as exc:  # (a profile, a config file, a credential process that fails: not vault's)
            raise PermanentError(f"AWS configuration: {exc}") from None
        # botocore sends a file-like body (``_ViewBody``) with "Expect: 100-continue": one more round trip per
        # PUT (50-200 ms over a WAN) for nothing we use -- as with a bytes body, the body goes at once
        self._s3.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        self._conditional = True  # If-None-Match supported until the store says otherwise
        self._lock = threading.Lock()

    # --- naming and errors --------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    @contextlib.contextmanager
    def _errors(self, op: str, name: str) -> Iterator[None]:
        what = f"{op} {self.location}/{name}" if name else f"{op} {self.location}"
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            msg = err.get("Message") or code
            if code == "NoSuchBucket":
                if name.startswith(STORE_CONTENT):  # (the store went away mid-run: no evidence of damage)
                    raise PermanentError(f"bucket {self.bucket!r} is gone ({what})") from None
                raise ObjectNotFound(f"bucket {self.bucket!r} does not exist ({what})") from None
            if code in _NOT_FOUND_CODES or status == 404:
                raise ObjectNotFound(f"no such object: {what}") from None
            if code == "PreconditionFailed" or status == 412:
                raise ObjectExists(f"object already exists: {what}") from None
            if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
                raise TransientError(f"S3 {what}: {status} {code}: {msg}") from None
            if code == "InvalidObjectState":
                raise PermanentError(f"S3 {what}: the object is in an archive storage class (GLACIER, DEEP_ARCHIVE): "
                                     "it cannot be read until restored; keep vault's packs in a class that can be "
                                     "read at once") from None
            if code in _DENIED_CODES or status == 403:
                raise AccessDenied(f"S3 access denied for {what}: {msg} (check the credentials and the "
                                     "bucket policy)") from None
            raise BackendError(f"S3 {what}: {status} {code}: {msg}") from None
        except NoCredentialsError:
            raise PermanentError("no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                 "~/.aws/credentials or an instance role") from None
        except (PartialCredentialsError, CredentialRetrievalError, ProfileNotFound, ConfigParseError,
                InvalidConfigError) as exc:
            raise PermanentError(f"AWS configuration: {exc}") from None
        except RecursionError:  # botocore's region redirector asking again and again (a 301 with no region)
            raise PermanentError(_redirects(what)) from None
        except FlexibleChecksumError as exc:  # a body failing the store's checksum: retried, then damage
            raise CorruptResponse(f"S3 {what}: {exc}") from None
        except HTTPClientError as exc:
            if "maximum recursion depth" in str(exc):  # (the same, met inside the HTTP client)
                raise PermanentError(_redirects(what)) from None
            raise TransientError(f"S3 {what}: {exc}") from None
        except (BotoConnectionError, IncompleteReadError) as exc:
            # ConnectionError: refused, connect timeout; HTTPClientError: read timeout, connection closed or
            # reset before the response (ConnectionClosedError) or inside its body (ResponseStreamingError);
            # a short body: all worth a retry
            raise TransientError(f"S3 {what}: {exc}") from None
        except BotoCoreError as exc:
            raise BackendError(f"S3 {what}: {exc}") from None
        except OSError as exc:  # a reset while streaming a body
            raise TransientError(f"S3 {what}: {exc}") from None
        except urllib3.exceptions.HTTPError as exc:  # a reset inside an error answer's body: botocore reads it
            raise TransientError(f"S3 {what}: {exc}") from None  # outside its own handlers (urllib3's ProtocolError)
        except (ValueError, KeyError) as exc:  # botocore parsing a head cut short (a date cut in two, a header
            # missing): the response, not the object, is bad -- retried, never taken as damage
            raise TruncatedResponse(f"S3 {what}: malformed response ({type(exc).__name__}: {exc})") from None

    # --- the Backend protocol -----------------------------------------------------------------------
    def put(self, name: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        key = self._key(name)
        extra = {}
        if self.storage_class and name.startswith("data/"):
            extra["StorageClass"] = self.storage_class
        if len(data) > MULTIPART_THRESHOLD:
            if not overwrite and self.exists(name):
                raise ObjectExists(f"object already exists: {self.location}/{name}")
            self._put_multipart(name, key, data, extra)
            return
        # our own CRC32 (zlib releases the GIL; botocore's would feed it 1 MiB at a time from Python)
        extra["ChecksumCRC32"] = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        # the body is read from ``data`` in place: bytes(data) held a second copy of every pack in flight
        # (~16 MiB more per connection: a helper measured 400 MiB at the default 8 connections)
        with _ViewBody(data) as body:
            if not overwrite and self._conditional:
                try:
                    with self._errors("PUT", name):
                        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*", **extra)
                    return
                except BackendError as exc:
                    if "NotImplemented" not in str(exc) and " 501 " not in str(exc):
                        raise
                    with self._lock:
                        self._conditional = False  # this store cannot do conditional writes: check first
            if not overwrite and self.exists(name):
                raise ObjectExists(f"object already exists: {self.location}/{name}")
            body.seek(0)
            with self._errors("PUT", name):
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)

    def _sub_request(self, op: str, name: str, call):
        """One request of a multipart upload, retried on TransientError with backoff and full jitter."""
        def attempt():
            with self._errors(op, name):
                return call()

        def backoff(retry: int) -> None:
            time.sleep(random.uniform(0, min(SUB_MAX_DELAY, SUB_BASE_DELAY * 2**retry)))

        return retry_transient(attempt, SUB_ATTEMPTS, backoff, f"{self.location}/{name}")

    def _put_multipart(self, name: str, key: str, data: bytes | memoryview, extra: dict) -> None:
        with self._errors("CREATE-MULTIPART", name):
            upload_id = self._s3.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)["UploadId"]
        try:
            parts = []
            # released on the way out, error or not: the caller may close the buffer under ``data`` (an mmap)
            # while the exception's traceback still holds this frame
            with memoryview(data) as view:
                for i, off in enumerate(range(0, len(view), PART_SIZE), start=1):
                    body = bytes(view[off : off + PART_SIZE])
                    etag = self._sub_request("UPLOAD-PART", name, lambda i=i, body=body: self._s3.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=i, Body=body)["ETag"])
                    parts.append({"PartNumber": i, "ETag": etag})
                del body
                size = len(view)
            try:
                self._sub_request("COMPLETE-MULTIPART", name, lambda: self._s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
            except ObjectNotFound:  # NoSuchUpload: an earlier try completed it and only the answer was lost
                if self.size(name) != size:
                    raise
        except BaseException:
            with contextlib.suppress(Exception):
                self._sub_request("ABORT-MULTIPART", name, lambda: self._s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id))
            raise

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            return b""
        args = {"Bucket": self.bucket, "Key": key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            args["Range"] = f"bytes={offset}-{end}"
        try:
            with self._errors("GET", name):
                resp = self._s3.get_object(**args)
                return _checked_body(resp, resp["Body"].read(), offset, length, f"GET {self.location}/{name}")
        except BackendError as exc:
            if "InvalidRange" in str(exc) or " 416 " in str(exc):
                return b""  # a range starting past the end: nothing there
            raise

    def size(self, name: str) -> int:
        key = self._key(name)  # (a bad name: ValueError, before the request -- not a malformed response)
        with self._errors("HEAD", name):
            resp = self._s3.head_object(Bucket=self.bucket, Key=key)
            if "ContentLength" not in resp or "ETag" not in resp:
                raise TruncatedResponse(f"S3 HEAD {self.location}/{name}: the response was cut short (no "
                                        "Content-Length or ETag)")
            return int(resp["ContentLength"])

    def exists(self, name: str) -> bool:
        return exists_by_size(self, name)

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        base = f"{self.prefix}/" if self.prefix else ""
        extra = {"StartAfter": base + after} if after is not None else {}
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix, **extra)
        with self._errors("LIST", prefix):
            for page in _whole_pages(pages, f"LIST {self.location}/{prefix}"):
                if self.on_page is not None:
                    self.on_page()  # (a request each: a counter above counts pages, not calls)
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):  # a "folder" marker (S3 consoles, rclone mkdir): no object of ours
                        continue
                    yield obj["Key"][len(base):], int(obj["Size"])

    def delete(self, name: str) -> None:
        key = self._key(name)
        with self._errors("DELETE", name):
            self._s3.delete_object(Bucket=self.bucket, Key=key)

    def _bucket_exists(self) -> bool | None:
        """Whether the bucket exists; None when the credentials may not ask (HeadBucket needs s3:ListBucket on
        the bucket, which a policy scoped to the prefix with an ``s3:prefix`` condition does not grant)."""
        try:
            with self._errors("HEAD-BUCKET", ""):
                self._s3.head_bucket(Bucket=self.bucket)
            return True
        except ObjectNotFound:
            return False
        except AccessDenied:
            return None

    def exists_store(self) -> bool:
        if self._bucket_exists() is False:
            return False
        return self.exists("config")

    def create_store(self) -> None:
        if self._bucket_exists() is not False:  # (may not ask: then it exists, or the first write says so)
            return
        region = self._s3.meta.region_name
        args = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with self._errors("CREATE-BUCKET", ""):
            self._s3.create_bucket(**args)

    def list_multipart_uploads(self) -> list[tuple[str, str, float]]:
        """(key, upload id, initiated epoch) of unfinished multipart uploads under the prefix."""
        base = f"{self.prefix}/" if self.prefix else ""
        out = []
        with self._errors("LIST-MULTIPART", ""):
            pages = self._s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=base)
            for page in _whole_pages(pages, f"LIST-MULTIPART {self.location}"):
                for u in page.get("Uploads", []):
                    out.append((u["Key"], u["UploadId"], u["Initiated"].timestamp()))
        return out

    def abort_multipart(self, key: str, upload_id: str) -> None:
        base = f"{self.prefix}/" if self.prefix else ""
        if not key.startswith(base):
            raise ValueError(f"refusing to touch {key!r}: outside {self.location}")
        with self._errors("ABORT-MULTIPART", key):
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._s3.close()

