"""Shared fixtures: a clean environment, a CLI runner, a fast-KDF repository, tree builders and comparers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from vault.cli.main import main

PASSWORD = "correct horse battery staple"
FAST_INIT = ["--kdf-memory", "1", "--kdf-iterations", "1"]


# A suite started from a non-interactive shell in the background (`nohup .ci/run &`) inherits SIGINT ignored, and
# so would every vault the tests start: the Ctrl-C tests then saw no interruption. Python's own handler here
# makes the children start with the default action again (an ignored signal stays ignored across exec).
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No VAULT_* leaks in from the developer's shell; HOME and the cache point into tmp."""
    for k in list(os.environ):
        if k.startswith("VAULT_") or k.startswith("AWS_"):
            monkeypatch.delenv(k, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    # Tests make files and back them up in-process within milliseconds: the rule that reads a file again when
    # its read came within one timestamp granule of its change (filereader.racy; tested on its own in
    # test_incremental) would make their second backups read such files again. Off here, on for vault itself.
    from vault import filereader

    monkeypatch.setattr(filereader, "RACY_FINE_NS", 0)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self):
        import json

        return json.loads(self.out)


# Variables an S3 repository needs, passed from os.environ (set by the ``s3_env`` fixture) to every run.
S3_ENV_PREFIXES = ("AWS_", "VAULT_S3_ENDPOINT")


class Cli:
    """Runs ``vault`` in-process (fast) with a repository, password and cache preset.

    ``repo`` is a Path (local repository) or a URL string (``s3://bucket/prefix``); ``extra`` is more
    environment for every run (e.g. ``{"VAULT_S3_ENDPOINT": proxy.url}``)."""

    def __init__(self, capfd, repo: Path | str, cache: Path, extra: dict | None = None):
        self.capfd, self.repo, self.cache = capfd, repo, cache
        self.extra = dict(extra or {})

    def env(self) -> dict:
        s3 = {k: v for k, v in os.environ.items() if k.startswith(S3_ENV_PREFIXES)}
        return {**s3, "VAULT_REPOSITORY": str(self.repo), "VAULT_PASSWORD": PASSWORD,
                "VAULT_CACHE_DIR": str(self.cache), **self.extra}

    def __call__(self, *args: str, ok: bool | int = True) -> Result:
        self.capfd.readouterr()
        old = {k: os.environ.get(k) for k in self.env()}
        os.environ.update(self.env())
        try:
            code = main([str(a) for a in args])
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        cap = self.capfd.readouterr()
        res = Result(code, cap.out, cap.err)
        if ok is True:
            assert code == 0, f"vault {' '.join(map(str, args))} -> {code}\n{cap.out}\n{cap.err}"
        elif ok is not False:
            assert code == ok, f"vault {' '.join(map(str, args))} -> {code}, wanted {ok}\n{cap.out}\n{cap.err}"
        return res

    def proc(self, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        """Run vault as a real process (for kills, TTY-less runs, exit codes end to end)."""
        e = {**os.environ, **self.env(), **(env or {})}
        return subprocess.run([sys.executable, "-m", "vault.cli.main", *map(str, args)], env=e,
                              capture_output=True, **kw)


def with_jobs(cli: "Cli", jobs: str, *args, ok: bool | int = True) -> "Result":
    """``cli(*args)`` with VAULT_JOBS set ("1": one worker thread; "2": worker processes, local repository)."""
    cli.extra["VAULT_JOBS"] = jobs
    try:
        return cli(*args, ok=ok)
    finally:
        del cli.extra["VAULT_JOBS"]


@pytest.fixture
def cli(capfd, tmp_path) -> Cli:
    return Cli(capfd, tmp_path / "repo", tmp_path / "cache")


@pytest.fixture
def repo(cli) -> Cli:
    """An initialised local repository (fast KDF)."""
    cli("init", *FAST_INIT)
    return cli


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real tmpfs of ``size`` (e.g. "8m") mounted at ``path`` (created) for the block; the test is skipped
    where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def ext4(path: Path, size_mb: int, inodes: int | None = None):
    """A real ext4 file system of ``size_mb`` MiB (an image file on a loop device) mounted at ``path`` for the
    block; the test is skipped where that is not allowed (no root, no loop devices, no mkfs.ext4)."""
    path.mkdir(parents=True, exist_ok=True)
    image = path.parent / (path.name + ".img")
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", *(["-N", str(inodes)] if inodes else []), str(image)],
                          capture_output=True)
    if made.returncode != 0 or subprocess.run(["mount", "-o", "loop", str(image), str(path)],
                                              capture_output=True).returncode != 0:
        image.unlink()
        pytest.skip("cannot make and mount an ext4 image here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        image.unlink()


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the file system under directory ``path`` with a file, then give ``leave`` bytes back."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:  # (unbuffered: a buffered tail would fail again at close)
        try:
            while True:
                f.write(bytes(65536))
        except OSError:
            pass
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def kill_when(p: subprocess.Popen, ready, timeout: float = 60.0, poll: float = 0.002, what: str = "it") -> None:
    """SIGKILL ``p`` as soon as ``ready()`` is true; fail if ``p`` ends first (the kill point was missed).
    Always reaps ``p`` (its output pipes are drained)."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    try:
        while p.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(poll)
        assert p.poll() is None, f"{what} finished before it could be killed: {p.communicate()}"
        p.send_signal(signal.SIGKILL)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    assert p.returncode == -signal.SIGKILL


# --- S3: a moto server in its own process, test credentials, s3:// repositories -----------------------------
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    """URL of moto's standalone S3 server (``python -m moto.server``), one process for the session."""
    from s3server import MotoServer

    server = MotoServer.start(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    yield server.url
    server.stop()


@pytest.fixture
def s3_env(monkeypatch, moto_endpoint) -> str:
    """AWS test credentials and VAULT_S3_ENDPOINT (the moto server) in os.environ; returns the endpoint."""
    for k, v in S3_TEST_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("VAULT_S3_ENDPOINT", moto_endpoint)
    return moto_endpoint


def unique_bucket() -> str:
    return f"vault-{uuid.uuid4().hex[:20]}"


def moto_client(endpoint: str):
    """A boto3 client on the moto server, for tests to look at buckets (list, head) directly."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture
def s3cli(capfd, tmp_path, s3_env) -> Cli:
    """Like ``cli``, with the repository ``s3://vault-<unique>/repo`` on the moto server.

    Extra attributes: ``bucket``, ``prefix``, ``endpoint`` and ``client`` (a boto3 client to inspect the bucket)."""
    c = Cli(capfd, f"s3://{unique_bucket()}/repo", tmp_path / "cache")
    c.bucket, c.prefix, c.endpoint = c.repo[len("s3://"):].split("/")[0], "repo", s3_env
    c.client = moto_client(s3_env)
    return c


@pytest.fixture
def s3_repo(s3cli) -> Cli:
    """An initialised S3 repository (fast KDF)."""
    s3cli("init", *FAST_INIT)
    return s3cli


# --- trees ------------------------------------------------------------------------------------------
class Symlink(str):
    """make_tree value: a symlink with this target."""


class Hardlink(str):
    """make_tree value: a hardlink to this path (relative to the tree root), made after it."""


def make_tree(root: Path, spec: dict, mtime_ns: int = 1_700_000_000_123_456_789) -> Path:
    """Build a tree: bytes -> file, dict -> dir, Symlink -> symlink, Hardlink -> hardlink; keys may be bytes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    links = []

    def build(base: bytes, d: dict) -> None:
        for name, v in d.items():
            p = os.path.join(base, os.fsencode(name))
            if isinstance(v, dict):
                os.mkdir(p)
                build(p, v)
            elif isinstance(v, Symlink):
                os.symlink(os.fsencode(str(v)), p)
            elif isinstance(v, Hardlink):
                links.append((os.path.join(os.fsencode(root), os.fsencode(str(v))), p))
            else:
                with open(p, "wb") as f:
                    f.write(v)
                os.utime(p, ns=(mtime_ns, mtime_ns))

    build(os.fsencode(root), spec)
    for src, dst in links:
        os.link(src, dst)
    return root


def scan(root: Path) -> dict[bytes, tuple]:
    """{relative path: (type, content/target, mode, mtime_ns or None, inode group)} with bytes names."""
    out = {}
    rootb = os.fsencode(root)
    inodes: dict[tuple, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(rootb):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, rootb)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p), None, None, None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", None, stat.S_IMODE(st.st_mode), st.st_mtime_ns, None)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    import hashlib

                    digest = hashlib.sha256(f.read()).hexdigest()
                group = None
                if st.st_nlink > 1:
                    group = inodes.setdefault((st.st_dev, st.st_ino), rel)
                out[rel] = ("f", digest, stat.S_IMODE(st.st_mode), st.st_mtime_ns, group)
            else:
                out[rel] = ("o", None, stat.S_IMODE(st.st_mode), st.st_mtime_ns, None)
    return out


def assert_trees_equal(a: Path, b: Path) -> None:
    """Same names (bytes), types, contents, symlink targets, modes, mtimes (ns) and hardlink groups."""
    sa, sb = scan(a), scan(b)
    assert sorted(sa) == sorted(sb), f"paths differ: only in source {set(sa) - set(sb)}, only in restore {set(sb) - set(sa)}"
    diffs = {k: (sa[k], sb[k]) for k in sa if sa[k] != sb[k]}
    assert not diffs, f"entries differ: {diffs}"


@pytest.fixture
def tree_tools():
    return make_tree, assert_trees_equal


def tree_listing(root: Path) -> dict[str, tuple]:
    """{relative path: (file type, size, mtime_ns)} for everything below ``root`` (and ``root`` itself as ".");
    compare before/after to prove a command changed nothing in a repository."""
    root = Path(root)
    if not root.exists():
        return {}
    st = os.lstat(root)
    out = {".": (stat.S_IFMT(st.st_mode), None, st.st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), size, st.st_mtime_ns)
    return out


# --- a process that cannot read what the mode forbids, even as root -----------------------------------------
IS_ROOT = os.geteuid() == 0
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_dac_caps() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_unprivileged(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=120, preexec_fn=_drop_dac_caps if IS_ROOT else None)


@pytest.fixture
def restricted_ok(tmp_path):
    """Check that the restricted process really cannot read a mode-000 file (else the test means nothing)."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"secret")
    probe.chmod(0)
    p = run_unprivileged(["-c", f"open({str(probe)!r}, 'rb').read()"], dict(os.environ))
    probe.chmod(0o600)
    if p.returncode == 0:
        pytest.skip("cannot make a file unreadable to the backup process here")


@pytest.fixture
def local_tz(monkeypatch):
    """Set this process's local time zone for the test (``local_tz("America/New_York")``)."""
    def use(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()
