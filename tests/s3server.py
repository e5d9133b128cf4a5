"""Test helpers for the S3 backend: moto's standalone server in its own process, and a fault-injecting proxy.

* ``MotoServer.start()`` runs ``python -m moto.server -H 127.0.0.1 -p PORT`` as a separate process (a free
  port is picked by binding port 0 first), waits until it answers HTTP, and ``stop()`` terminates it.
* ``FaultProxy(upstream)`` is a small threaded HTTP/1.1 proxy on 127.0.0.1 (its own free port) that sits
  between vault and the server. On a seeded schedule (``random.Random(seed)``) it forwards each request, or
  answers 503 SlowDown / 500 InternalError itself (S3 XML error bodies, nothing forwarded), or forwards and
  then resets the connection halfway through the response, or adds latency. ``counts`` says what it did.
  ``stop()`` closes the listening socket and every open connection (the server "goes away"); ``start()``
  listens again on the same port.

Nothing here patches boto3: vault talks real HTTP through botocore to a real server.
"""

from __future__ import annotations

import collections
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

LOCALHOST = "127.0.0.1"
_MAX_HEAD = 64 * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Return once ``url`` answers HTTP at all (any status); raise RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # an HTTP error status is an answer
        except (OSError, urllib.error.URLError) as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


class MotoServer:
    """moto's standalone S3 server as a child process on 127.0.0.1."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path | None):
        self.proc, self.port, self.log_path = proc, port, log_path
        self.url = f"http://{LOCALHOST}:{port}"

    @classmethod
    def start(cls, log_path: Path | None = None, timeout: float = 30.0) -> "MotoServer":
        port = free_port()
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VAULT_", "MOTO_"))}
        try:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(port)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        server = cls(proc, port, log_path)
        try:
            wait_for_http(server.url + "/", timeout=timeout, proc=proc)
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the fault proxy ----------------------------------------------------------------------------------------
class _Closed(Exception):
    """The peer closed the connection (cleanly, between requests, or not)."""


def _read_head(f) -> list[bytes]:
    """Read a request/response head: the start line and header lines, up to the empty line."""
    lines, total = [], 0
    while True:
        line = f.readline(_MAX_HEAD)
        if not line:
            if lines:
                raise _Closed("connection closed inside a message head")
            raise _Closed("connection closed")
        total += len(line)
        if total > _MAX_HEAD:
            raise _Closed("message head too large")
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # tolerate stray CRLF between messages
            return lines
        lines.append(line)


def _headers(lines: list[bytes]) -> dict[str, str]:
    out = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        out[name.strip().lower()] = value.strip()
    return out


def _read_exact(f, n: int) -> bytes:
    parts, left = [], n
    while left:
        b = f.read(min(left, 1 << 20))
        if not b:
            raise _Closed("connection closed inside a body")
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def _read_chunked(f) -> bytes:
    """Read a chunked body; return it raw (framing included) so it can be relayed as is."""
    raw = []
    while True:
        line = f.readline(_MAX_HEAD)
        if not line:
            raise _Closed("connection closed inside a chunked body")
        raw.append(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                t = f.readline(_MAX_HEAD)
                if not t:
                    raise _Closed("connection closed inside chunked trailers")
                raw.append(t)
                if t in (b"\r\n", b"\n"):
                    return b"".join(raw)
        raw.append(_read_exact(f, size + 2))


def _read_body(f, headers: dict[str, str], *, until_eof: bool = False) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _read_chunked(f)
    if "content-length" in headers:
        return _read_exact(f, int(headers["content-length"]))
    if until_eof:
        return f.read()
    return b""


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing peer or middlebox would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def s3_request_type(method: str, target: str) -> str:
    """The S3 billing class of a request: LIST for a listing (GET on a bucket, or of multipart uploads or
    parts), PUT for PUT/POST/COPY (multipart create and complete included), else the method."""
    path, _, query = target.partition("?")
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    if method == "GET" and ("list-type" in params or "uploads" in params or "uploadId" in params
                            or path.strip("/").count("/") == 0):
        return "LIST"
    if method in ("PUT", "POST"):
        return "PUT"
    return method


_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "error": (500, "Internal Server Error", "InternalError",
              "We encountered an internal error. Please try again."),
}
ACTIONS = ("slowdown", "error", "reset", "headcut", "shortbody", "latency")


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 injecting S3-style faults on a seeded schedule.

    Per request, in this order of the random draw: ``slowdown_rate`` answer 503 SlowDown, ``error_rate``
    answer 500 InternalError (neither is forwarded), ``reset_rate`` forward and reset the connection halfway
    through the response, ``headcut_rate`` forward and close the connection part way through the response's
    head (status line and headers: a client may then see a 200 with no body), ``shortbody_rate`` forward a 200 or 206
    with half its body and a Content-Length that agrees (a broken cache or gateway: only the length the reader
    expected tells), ``latency_rate`` forward after
    sleeping ``latency`` seconds (a (lo, hi) range);
    otherwise forward. ``fail_rate`` sets the three failure rates to a third of it each, unless given
    separately. A failure is transient: the same request (method + target) fails at most
    ``max_consecutive`` times in a row, then goes through (so retries always make progress). ``match``, a
    predicate ``(method, target) -> bool``, limits faults to the requests it accepts.

    ``counts`` (a Counter) holds ``requests``, ``forwarded``, ``slowdown``, ``error``, ``reset``,
    ``latency``, ``max_in_flight`` (the most requests at once), ``by_method:<M>`` and ``by_type:<T>`` (T as in ``s3_request_type``: PUT, GET, LIST, ...). Use as a context manager or call ``close()``.
    """

    def __init__(self, upstream: str, *, seed: int = 0, fail_rate: float = 0.0, slowdown_rate: float | None = None,
                 error_rate: float | None = None, reset_rate: float | None = None, headcut_rate: float = 0.0,
                 shortbody_rate: float = 0.0, latency_rate: float = 0.0,
                 latency: tuple[float, float] = (0.005, 0.05), max_consecutive: int = 3, port: int = 0,
                 match=None):
        host, _, port_s = upstream.removeprefix("http://").rstrip("/").partition(":")
        if host not in (LOCALHOST, "localhost"):
            raise ValueError(f"FaultProxy only proxies to {LOCALHOST}, not {upstream!r}")
        self.upstream = (LOCALHOST, int(port_s or 80))
        third = fail_rate / 3
        self.rates = {
            "slowdown": third if slowdown_rate is None else slowdown_rate,
            "error": third if error_rate is None else error_rate,
            "reset": third if reset_rate is None else reset_rate,
            "headcut": headcut_rate,
            "shortbody": shortbody_rate,
            "latency": latency_rate,
        }
        if sum(self.rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        self.latency = latency
        self.max_consecutive = max_consecutive
        self.match = match  # None: every request may be faulted; else a predicate (method, target) -> bool
        self.counts: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._streak: dict[tuple[str, str], int] = {}
        self._in_flight = 0  # requests decided and not yet answered (``counts["max_in_flight"]``: the most at once)
        self._socks: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def set_rates(self, **rates: float) -> None:
        """Change rates on the fly (e.g. ``set_rates(reset=0)``)."""
        with self._lock:
            for k, v in rates.items():
                if k not in self.rates:
                    raise ValueError(f"unknown rate {k!r}")
                self.rates[k] = v

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen (again) on ``self.port`` (a free one the first time)."""
        if self._listener is not None:
            return
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((LOCALHOST, self.port))
        ls.listen(128)
        ls.settimeout(0.1)
        self.port = ls.getsockname()[1]
        self._stopping.clear()
        self._listener = ls
        self._acceptor = threading.Thread(target=self._accept_loop, args=(ls,), name="fault-proxy-accept",
                                          daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Stop listening and cut every open connection (clients and upstream); ``start()`` resumes."""
        if self._listener is None:
            return
        self._stopping.set()
        ls, self._listener = self._listener, None
        if self._acceptor is not None:
            self._acceptor.join(5)
        ls.close()
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)

    close = stop

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving --------------------------------------------------------------------------------------------
    def _accept_loop(self, ls: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            t = threading.Thread(target=self._serve, args=(client,), name="fault-proxy-conn", daemon=True)
            with self._lock:
                if self._stopping.is_set():
                    _reset(client)
                    return
                self._socks.add(client)
                self._threads.add(t)
            t.start()

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _decide(self, method: str, target: str) -> str:
        with self._lock:
            self._in_flight += 1
            self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self._in_flight)
            self.counts["requests"] += 1
            self.counts[f"by_method:{method}"] += 1
            self.counts[f"by_type:{s3_request_type(method, target)}"] += 1
            if self.match is not None and not self.match(method, target):
                self.counts["forwarded"] += 1
                return "forward"
            draw = self._rng.random()
            action, edge = "forward", 0.0
            for name in ACTIONS:
                edge += self.rates[name]
                if draw < edge:
                    action = name
                    break
            key = (method, target)
            if action in ("slowdown", "error", "reset", "headcut", "shortbody"):
                if self._streak.get(key, 0) >= self.max_consecutive:
                    action = "forward"
                    self._streak.pop(key, None)
                else:
                    self._streak[key] = self._streak.get(key, 0) + 1
            else:
                self._streak.pop(key, None)
            self.counts[action if action != "forward" else "forwarded"] += 1
            if action == "latency":
                self.counts["forwarded"] += 1
            return action

    def _serve(self, client: socket.socket) -> None:
        up: socket.socket | None = None
        upf = None
        cf = client.makefile("rb")
        try:
            while not self._stopping.is_set():
                try:
                    head = _read_head(cf)
                except _Closed:
                    return
                method, target = (head[0].decode("latin-1").split(" ") + ["", ""])[:2]
                hdrs = _headers(head)
                if hdrs.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # we answer it; upstream never sees it
                    head = [h for h in head if not h.lower().startswith(b"expect:")]
                body = _read_body(cf, hdrs)
                action = self._decide(method, target)
                try:
                    if action in _ERRORS:
                        client.sendall(self._error_response(action, method))
                        if hdrs.get("connection", "").lower() == "close":
                            return
                        continue
                    if action == "latency":
                        time.sleep(self._rng_uniform(*self.latency))
                    if self._stopping.is_set():
                        return  # the server went away while this request waited
                    for attempt in (1, 2):
                        fresh = up is None
                        if fresh:
                            up = socket.create_connection(self.upstream, timeout=120)
                            with self._lock:
                                self._socks.add(up)
                            upf = up.makefile("rb")
                        try:
                            up.sendall(b"".join(head) + b"\r\n" + body)
                            status, rhead, rbody, close_after = self._read_response(upf, method)
                            break
                        except (OSError, _Closed):
                            # an idle keep-alive connection the server had closed: once more on a new one
                            self._drop(up)
                            up = upf = None
                            if fresh or attempt == 2 or self._stopping.is_set():
                                raise
                    if action == "headcut":  # past the status line, before the blank line that ends the head
                        first = rhead.index(b"\r\n") + 2
                        client.sendall(rhead[: self._rng_int(first, len(rhead) - 3)])
                        client.shutdown(socket.SHUT_WR)  # a clean end of stream (FIN), not a reset
                        return
                    if action == "shortbody" and status in (200, 206) and len(rbody) >= 2:
                        rbody = rbody[: len(rbody) // 2]
                        rhead = b"".join(ln + b"\r\n" for ln in rhead.split(b"\r\n")[:-2]
                                         if not ln.lower().startswith(b"content-length:"))
                        rhead += f"Content-Length: {len(rbody)}\r\n\r\n".encode()
                    if action == "reset":
                        if len(rbody) >= 2:
                            client.sendall(rhead + rbody[: len(rbody) // 2])
                        else:
                            client.sendall(rhead[: len(rhead) // 2])
                        return  # finally: RST
                    client.sendall(rhead + rbody)
                    if close_after:
                        self._drop(up)
                        up = upf = None
                    if hdrs.get("connection", "").lower() == "close":
                        return
                finally:
                    self._finished()
        except (OSError, _Closed, ValueError):
            return
        finally:
            with self._lock:
                self._socks.discard(client)
                self._threads.discard(threading.current_thread())
            try:
                cf.close()
            except OSError:
                pass
            _reset(client)
            if up is not None:
                self._drop(up)

    def _rng_int(self, lo: int, hi: int) -> int:
        with self._lock:
            return self._rng.randint(lo, max(lo, hi))

    def _rng_uniform(self, lo: float, hi: float) -> float:
        with self._lock:
            return self._rng.uniform(lo, hi)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.discard(sock)
        try:
            sock.close()
        except OSError:
            pass

    @staticmethod
    def _read_response(f, method: str) -> tuple[int, bytes, bytes, bool]:
        """Read one whole response from upstream: (status, raw head incl. blank line, raw body, close after)."""
        while True:
            lines = _read_head(f)
            status = int(lines[0].split()[1])
            if 100 <= status < 200:  # interim (100 Continue): already answered to the client; drop it
                continue
            break
        hdrs = _headers(lines)
        no_body = method == "HEAD" or status in (204, 304)
        framed = "content-length" in hdrs or "chunked" in hdrs.get("transfer-encoding", "").lower()
        body = b"" if no_body else _read_body(f, hdrs, until_eof=not framed)
        close_after = hdrs.get("connection", "").lower() == "close" or (not no_body and not framed)
        if not no_body and not framed:  # body ran to EOF: frame it for the client with a length
            lines = [ln for ln in lines if not ln.lower().startswith(b"connection:")]
            lines.append(f"Content-Length: {len(body)}\r\n".encode())
            lines.append(b"Connection: close\r\n")
        return status, b"".join(lines) + b"\r\n", body, close_after

    def _error_response(self, action: str, method: str) -> bytes:
        status, reason, code, message = _ERRORS[action]
        with self._lock:
            rid = f"{self._rng.getrandbits(64):016X}"
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>{rid}</RequestId><HostId>fault-proxy</HostId></Error>").encode()
        if method == "HEAD":
            body = b""
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nx-amz-request-id: {rid}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        return head + body
