"""S3 repositories end to end (issue 3), against moto's standalone server in its own process.

vault talks real HTTP through boto3 -- to the server directly, or through ``s3server.FaultProxy`` which
answers 503 SlowDown / 500, resets connections mid-response, adds latency, or goes away entirely. Nothing
patches boto3. The tests look at the bucket with their own (read-only) boto3 client.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import FAST_INIT, Cli, Hardlink, Symlink, assert_trees_equal, kill_when, make_tree
from s3server import FaultProxy

from vault.backend import s3 as s3_module

MiB = 1 << 20


# --- helpers ------------------------------------------------------------------------------------------------
def keys(cli: Cli, prefix: str = "") -> dict[str, int]:
    """{key: size} of every object in the repository's bucket whose key starts with ``prefix``."""
    out = {}
    for page in cli.client.get_paginator("list_objects_v2").paginate(Bucket=cli.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["Size"]
    return out


def count(cli: Cli, sub: str) -> int:
    return len(keys(cli, f"{cli.prefix}/{sub}"))


def multipart_uploads(cli: Cli) -> list[dict]:
    return cli.client.list_multipart_uploads(Bucket=cli.bucket).get("Uploads", [])


def random_tree(root: Path, seed: int, files: int, size: int, dirs: int = 4, small: int = 0) -> Path:
    """``files`` incompressible files of ``size`` bytes over ``dirs`` directories, plus ``small`` tiny ones."""
    rng = random.Random(seed)
    for i in range(files):
        d = root / f"d{i % dirs:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.bin").write_bytes(rng.randbytes(size))
    if small:
        (root / "small").mkdir(parents=True, exist_ok=True)
        for i in range(small):
            (root / "small" / f"s{i:04d}.txt").write_bytes(rng.randbytes(rng.randrange(0, 4096)))
    return root


def vault_env(cli: Cli, **extra: str) -> dict:
    return {**os.environ, **cli.env(), **extra}


def run(cli: Cli, *args, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """vault as a real process (text output), with extra environment."""
    return subprocess.run([sys.executable, "-m", "vault.cli.main", *map(str, args)], env=vault_env(cli, **env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"{p.args[3:]} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def popen(cli: Cli, *args, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vault.cli.main", *map(str, args)], env=vault_env(cli, **env),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def restored(target: Path, src: Path) -> Path:
    return target / src.relative_to("/")


def one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("vault: "), f"want one 'vault: ...' line, got:\n{stderr}"
    return lines[0]


# --- (1) backup, restore --at, verify --read-data; only keys under PREFIX/; request accounting --------------
TRICKY = {
    "empty.txt": b"",
    "hello.txt": b"hello\n",
    b"latin1-\xe9\xff.bin": bytes(range(256)) * 7,
    "x" * 255: b"a name of 255 bytes",
    "spaces and 'quotes' and \\ and newline\n.txt": b"q",
    "emptydir": {},
    "sub": {"deeper": {"f.txt": b"abc" * 1000, "emptier": {}}, "link": Symlink("../hello.txt"),
            "dangling": Symlink("nowhere/at/all"), "hard": Hardlink("hello.txt")},
}


def tricky_tree(root: Path, big: bytes) -> Path:
    make_tree(root, {**TRICKY, "big.bin": big})
    os.chmod(root / "hello.txt", 0o600)
    os.chmod(root / "sub" / "deeper" / "f.txt", 0o755)
    os.chmod(root / "sub" / "deeper", 0o700)
    for dirpath, _, _ in sorted(os.walk(root), reverse=True):  # children first; fixed, comparable times
        os.utime(dirpath, ns=(1_600_000_000_000_000_001, 1_600_000_000_000_000_001))
    return root


def test_backup_restore_at_verify_on_s3(s3_repo, tmp_path):
    big = random.Random(1).randbytes(3 * MiB + 12345)  # a few chunks
    src = tricky_tree(tmp_path / "src", big)
    ref_v1 = tricky_tree(tmp_path / "ref_v1", big)  # the same tree, kept as the reference for snapshot 1

    b1 = s3_repo("--json", "backup", src, "--time", "2024-01-01T00:00:00Z").json
    assert b1["files_new"] >= 7 and b1["snapshot_id"]
    assert b1["requests"]["PUT"] > 0 and b1["bytes_up"] > 0 and b1["requests"]["HEAD"] >= 0

    # change the tree: a new file, a changed file, a removed one
    (src / "new.txt").write_bytes(b"new in v2")
    (src / "sub" / "deeper" / "f.txt").write_bytes(b"changed" * 999)
    os.unlink(src / "empty.txt")
    b2 = s3_repo("--json", "backup", src, "--time", "2024-06-01T00:00:00Z").json
    assert (b2["files_new"], b2["files_changed"]) == (1, 1)
    assert 0 < b2["bytes_up"] < b1["bytes_up"]  # dedup: the big file is not sent again

    snaps = s3_repo("--json", "snapshots").json
    assert [s["id"] for s in snaps] == [b1["snapshot_id"], b2["snapshot_id"]]

    r1 = s3_repo("--json", "restore", "--at", "2024-03-01T00:00:00Z", "--target", tmp_path / "r1").json
    assert r1["requests"]["GET"] > 0 and r1["bytes_down"] > 0
    os.rename(restored(tmp_path / "r1", src), tmp_path / "r1" / "tree")
    assert_trees_equal(ref_v1, tmp_path / "r1" / "tree")
    s3_repo("restore", "--at", "2024-06-01T00:00:00Z", "--target", tmp_path / "r2")
    assert_trees_equal(src, restored(tmp_path / "r2", src))

    v = s3_repo("--json", "verify", "--read-data").json
    assert v["ok"] is True and v["damage"] == []
    assert v["requests"]["GET"] > 0

    # an s3://BUCKET/PREFIX repository writes only keys under PREFIX/
    everything = keys(s3_repo)
    assert everything and all(k.startswith("repo/") for k in everything), sorted(everything)
    assert {k.split("/")[1] for k in everything} >= {"config", "keys", "data", "index", "snapshots"}
    assert multipart_uploads(s3_repo) == []


# --- (2) faults: 20% transient failures; an outage mid-backup --------------------------------------------------
def _is_list(method: str, target: str) -> bool:
    return method == "GET" and "list-type=2" in target


def test_listings_cut_in_their_headers_are_retried_never_taken_for_empty(s3cli, moto_endpoint, tmp_path):
    """Every listing's first tries end inside the response's head: botocore then parsed a 200 with no body as an
    empty listing, so 'no snapshots, no index' -- and prune deleted every pack of an intact repository (a
    fault-injection round). A listing must be whole (IsTruncated and KeyCount present, the count right), else
    it is retried."""
    s3cli("init", *FAST_INIT, "--pack-size", "1")
    src = random_tree(tmp_path / "src", seed=7, files=6, size=600_000, small=20)
    ok(run(s3cli, "backup", src))
    ok(run(s3cli, "backup", src))
    with FaultProxy(moto_endpoint, seed=11, headcut_rate=1.0, match=_is_list, max_consecutive=2) as proxy:
        via = {"VAULT_S3_ENDPOINT": proxy.url, "VAULT_CACHE_DIR": str(tmp_path / "cold")}
        snaps = json.loads(ok(run(s3cli, "--json", "snapshots", **via)).stdout)
        assert len(snaps) == 2
        p = json.loads(ok(run(s3cli, "--json", "prune", **via)).stdout)
        assert p["packs_deleted"] == 0 and p["snapshots"] == 2, p
        assert proxy.counts["headcut"] >= 4, proxy.counts
    v = json.loads(ok(run(s3cli, "--json", "verify", "--read-data")).stdout)
    assert v["ok"] is True
    ok(run(s3cli, "restore", "latest", "--target", tmp_path / "r"))
    assert_trees_equal(src, restored(tmp_path / "r", src))


def test_reads_cut_in_their_headers_are_retried_never_taken_for_damage(s3cli, moto_endpoint, tmp_path):
    """A third of all reads end inside the response's head: a body of 0 bytes came back as success, so restore
    and verify reported damage (exit 20) and a cut key listing read as a wrong password (exit 12) on an intact
    repository. A body must be as long as the response says, else it is retried."""
    s3cli("init", *FAST_INIT, "--pack-size", "1")
    src = random_tree(tmp_path / "src", seed=8, files=6, size=600_000, small=20)
    ok(run(s3cli, "backup", src))
    with FaultProxy(moto_endpoint, seed=12, headcut_rate=0.35, max_consecutive=2,
                    match=lambda m, t: m in ("GET", "HEAD")) as proxy:
        via = {"VAULT_S3_ENDPOINT": proxy.url, "VAULT_CACHE_DIR": str(tmp_path / "cold")}
        ok(run(s3cli, "restore", "latest", "--target", tmp_path / "r", **via))
        assert_trees_equal(src, restored(tmp_path / "r", src))
        v = json.loads(ok(run(s3cli, "--json", "verify", "--read-data", **via)).stdout)
        assert v["ok"] is True and v["damage"] == []
        assert proxy.counts["headcut"] >= 10, proxy.counts

def test_bodies_cut_short_with_a_length_that_agrees_are_retried_never_taken_for_damage(s3cli, moto_endpoint, tmp_path):
    """A store (a broken cache or gateway) that answers a third of the reads with half the body and a
    Content-Length that agrees: verify and restore reported damage (exit 20) on an intact repository, a key slot
    read as a wrong password (exit 12), and 'repair --read-data' dropped the files of the 'damaged' packs from
    the snapshot -- forget and prune, as it advised, then deleted their data. Whole objects whose size is listed
    are read as that many bytes; a manifest or index segment is read again, and damage is what reads back the
    same each time."""
    s3cli("init", *FAST_INIT, "--pack-size", "1")
    src = random_tree(tmp_path / "src", seed=9, files=6, size=600_000, small=20)
    ok(run(s3cli, "backup", src))
    sid = json.loads(ok(run(s3cli, "--json", "snapshots")).stdout)[0]["id"]
    with FaultProxy(moto_endpoint, seed=13, shortbody_rate=0.35, max_consecutive=2,
                    match=lambda m, t: m == "GET") as proxy:
        via = {"VAULT_S3_ENDPOINT": proxy.url, "VAULT_CACHE_DIR": str(tmp_path / "cold")}
        ok(run(s3cli, "restore", "latest", "--target", tmp_path / "r", **via))
        assert_trees_equal(src, restored(tmp_path / "r", src))
        v = json.loads(ok(run(s3cli, "--json", "verify", "--read-data", **via)).stdout)
        assert v["ok"] is True and v["damage"] == []
        r = run(s3cli, "--json", "repair", "--read-data", **via)
        assert r.returncode == 0, r.stdout[-3000:]
        assert proxy.counts["shortbody"] >= 10, proxy.counts
    assert [s["id"] for s in json.loads(ok(run(s3cli, "--json", "snapshots")).stdout)] == [sid]
    ok(run(s3cli, "restore", sid, "--target", tmp_path / "r2"))
    assert_trees_equal(src, restored(tmp_path / "r2", src))


@pytest.mark.parametrize("mib", [50, pytest.param(200, marks=pytest.mark.slow)])
def test_backup_restore_verify_through_transient_faults(s3cli, moto_endpoint, tmp_path, mib):
    s3cli("init", *FAST_INIT, "--pack-size", "1")  # many packs: many requests to fail
    src = random_tree(tmp_path / "src", seed=mib, files=mib // 2, size=2 * MiB, small=200)
    with FaultProxy(moto_endpoint, seed=2024, fail_rate=0.2, latency_rate=0.05) as proxy:
        via = {"VAULT_S3_ENDPOINT": proxy.url}
        b = json.loads(ok(run(s3cli, "--json", "backup", src, **via)).stdout)
        assert b["files_new"] == mib // 2 + 200
        assert b["bytes_up"] >= mib * MiB
        faults_in_backup = proxy.counts["slowdown"] + proxy.counts["error"] + proxy.counts["reset"]
        assert proxy.counts["requests"] >= 60 and faults_in_backup >= 0.1 * proxy.counts["requests"], proxy.counts

        ok(run(s3cli, "restore", "latest", "--target", tmp_path / "r", **via))
        assert_trees_equal(src, restored(tmp_path / "r", src))

        v = json.loads(ok(run(s3cli, "--json", "verify", "--read-data", **via)).stdout)
        assert v["ok"] is True and v["damage"] == []
        counts = dict(proxy.counts)
    print("proxy:", counts, "backup requests:", b["requests"], "bytes_up:", b["bytes_up"])
    for kind in ("slowdown", "error", "reset"):
        assert counts[kind] > 0, counts  # every kind of fault was exercised
    assert multipart_uploads(s3cli) == []


def test_outage_mid_backup_fails_cleanly_then_next_run_reuses_uploaded_packs(s3cli, moto_endpoint, tmp_path):
    s3cli("init", *FAST_INIT, "--pack-size", "1")  # many packs, an index checkpoint every 16
    total = 40 * MiB
    src = random_tree(tmp_path / "src", seed=5, files=40, size=MiB)
    proxy = FaultProxy(moto_endpoint, seed=3, latency_rate=1.0, latency=(0.02, 0.04))  # slow enough to catch
    try:
        p = popen(s3cli, "backup", src, VAULT_S3_ENDPOINT=proxy.url)
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            if count(s3cli, "index/") >= 1 and count(s3cli, "data/") >= 20:
                break
            time.sleep(0.02)
        assert p.poll() is None, "the backup finished before the outage; make it bigger or slower"
        proxy.stop()  # the server goes away: connections cut, new ones refused
        t0 = time.monotonic()
        _, err = p.communicate(timeout=120)
        failed_after = time.monotonic() - t0
        assert p.returncode == 1, (p.returncode, err)
        line = one_line_error(err)
        assert "127.0.0.1" in line or "connect" in line.lower() or "S3" in line, line
        print(f"outage: failed {failed_after:.1f}s after the proxy stopped: {line}")
        assert failed_after < 60
        assert count(s3cli, "snapshots/") == 0
        left = keys(s3cli, f"{s3cli.prefix}/data/")
        packs_left, bytes_left = len(left), sum(left.values())

        proxy.start()  # the server is back
        b = json.loads(ok(run(s3cli, "--json", "backup", src, VAULT_S3_ENDPOINT=proxy.url)).stdout)
    finally:
        proxy.stop()
    print("resumed run:", {k: b[k] for k in ("bytes_added", "bytes_up", "requests", "duration_s")},
          "data objects left by the failed run:", packs_left)
    assert b["files_new"] == 40
    # a full run sends every byte (random data does not compress): at least `total`; this one reuses the
    # packs the interrupted run's checkpoint recorded (16+ MiB of them)
    assert b["bytes_added"] <= total - 15 * MiB, (b["bytes_added"], packs_left)
    assert b["bytes_up"] <= total - 15 * MiB, (b["bytes_up"], b["requests"])
    assert b["requests"]["PUT"] < 40, b["requests"]  # fewer PUTs than a full run's 40+ data packs
    ok(run(s3cli, "restore", "latest", "--target", tmp_path / "r"))
    assert_trees_equal(src, restored(tmp_path / "r", src))
    v = json.loads(ok(run(s3cli, "--json", "verify", "--read-data")).stdout)
    assert v["ok"] is True
    # the promise in full: *every* pack the interrupted run stored is reused. Packs stored after its last
    # index checkpoint are named by no index, so the next run cannot know them and sends their blocks again.
    reused = total - b["bytes_added"]
    if reused < 0.9 * bytes_left:
        pytest.xfail(f"only {reused / MiB:.1f} MiB of the {bytes_left / MiB:.1f} MiB ({packs_left} packs) the "
                     "interrupted run stored were reused: packs after the last index checkpoint are re-uploaded "
                     "(and left for prune)")


# --- (3) small files are packed --------------------------------------------------------------------------------
def test_5000_small_files_make_fewer_than_50_data_objects(s3_repo, tmp_path):
    src = tmp_path / "src"
    for d in range(50):
        (src / f"dir{d:02d}").mkdir(parents=True)
        for f in range(100):
            (src / f"dir{d:02d}" / f"file{f:03d}.txt").write_bytes(f"file {d}/{f}\n".encode() * (1 + f % 7))
    b = s3_repo("--json", "backup", src).json
    assert b["files_new"] == 5000
    assert count(s3_repo, "data/") < 50
    assert b["requests"]["PUT"] < 50, b["requests"]


# --- (4) two hosts back up into one bucket at the same time --------------------------------------------------
def test_two_hosts_back_up_into_one_bucket_at_once(s3_repo, tmp_path):
    shared = random.Random(9).randbytes(3 * MiB)  # both hosts store these blocks: a dedup race
    srcs = {}
    for host, seed in (("alpha", 1), ("beta", 2)):
        src = random_tree(tmp_path / f"src-{host}", seed=seed, files=6, size=MiB, small=100)
        (src / "shared.bin").write_bytes(shared)
        srcs[host] = src
    procs = {host: popen(s3_repo, "--json", "backup", src, "--host", host,
                         VAULT_CACHE_DIR=str(tmp_path / f"cache-{host}"))
             for host, src in srcs.items()}
    ids = {}
    for host, p in procs.items():
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, (host, err)
        ids[host] = json.loads(out)["snapshot_id"]
    snaps = s3_repo("--json", "snapshots").json
    assert sorted(s["host"] for s in snaps) == ["alpha", "beta"]
    for host, src in srcs.items():
        s3_repo("restore", ids[host], "--target", tmp_path / f"r-{host}")
        assert_trees_equal(src, restored(tmp_path / f"r-{host}", src))
    assert s3_repo("--json", "verify", "--read-data").json["ok"] is True


# --- (5) the rest of the promises -------------------------------------------------------------------------------
def test_missing_bucket_is_exit_10_and_creates_nothing(s3cli, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"x"})
    for args in (["snapshots"], ["backup", src], ["restore", "latest", "--target", tmp_path / "r"]):
        r = s3cli(*args, ok=10)
        assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert s3cli.bucket in r.err
    with pytest.raises(ClientError):
        s3cli.client.head_bucket(Bucket=s3cli.bucket)  # nothing was created
    p = run(s3cli, "snapshots")
    assert p.returncode == 10
    one_line_error(p.stderr)


def test_storage_class_for_data_packs_only(s3_repo, tmp_path):
    src = random_tree(tmp_path / "src", seed=3, files=2, size=MiB, small=5)
    s3_repo("backup", src, "--s3-storage-class", "STANDARD_IA")
    classes = {}
    for key in keys(s3_repo):
        head = s3_repo.client.head_object(Bucket=s3_repo.bucket, Key=key)
        classes[key] = head.get("StorageClass", "STANDARD")
    data = {k: c for k, c in classes.items() if k.startswith("repo/data/")}
    rest = {k: c for k, c in classes.items() if not k.startswith("repo/data/")}
    assert data and set(data.values()) == {"STANDARD_IA"}, data
    assert rest and set(rest.values()) == {"STANDARD"}, rest
    # and it reads back as usual
    s3_repo("restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, restored(tmp_path / "r", src))


def test_killed_backup_leaves_no_multipart_upload_below_threshold(s3cli, tmp_path):
    s3cli("init", *FAST_INIT, "--pack-size", "1")
    # (80 MiB: a busy machine's polling must not miss the window -- with 30 the backup once finished first)
    src = random_tree(tmp_path / "src", seed=11, files=80, size=MiB)
    kill_when(popen(s3cli, "backup", src), lambda: count(s3cli, "data/") >= 5, poll=0.01, what="the backup")
    assert count(s3cli, "data/") >= 5 and count(s3cli, "snapshots/") == 0
    assert multipart_uploads(s3cli) == []
    # the repository is consistent after the kill
    assert s3cli("--json", "verify").json["ok"] is True


def test_killed_multipart_upload_is_cleaned_up_by_the_next_prune(s3cli, tmp_path):
    """Packs over the multipart threshold (64 MiB) go up in parts; SIGKILL cannot abort them. The next prune
    (exclusive lock: no upload can still be live) aborts every unfinished upload under the prefix."""
    s3cli("init", *FAST_INIT, "--pack-size", "80")
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(4).randbytes(100 * MiB))
    p = popen(s3cli, "backup", src)
    deadline = time.monotonic() + 120
    try:
        uploads = []
        while p.poll() is None and time.monotonic() < deadline:
            uploads = multipart_uploads(s3cli)
            if uploads:
                break
            time.sleep(0.02)
        assert uploads, "no multipart upload was seen before the backup ended"
        time.sleep(0.3)  # let a part or two go up
        p.send_signal(signal.SIGKILL)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    left = multipart_uploads(s3cli)
    assert left and all(u["Key"].startswith("repo/data/") for u in left), left
    res = s3cli("--json", "prune").json
    assert res["multipart_aborted"] == len(left)
    assert multipart_uploads(s3cli) == []
    assert s3cli("--json", "verify").json["ok"] is True


def test_multipart_pack_through_faults_completes_and_leaves_no_upload(s3cli, moto_endpoint, tmp_path):
    """A pack over the multipart threshold, with 30% of its part/complete/abort requests failing: each part is
    retried on its own, the pack lands whole, and no incomplete upload stays behind."""
    s3cli("init", *FAST_INIT, "--pack-size", "80")
    assert 80 * MiB > s3_module.MULTIPART_THRESHOLD
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(6).randbytes(100 * MiB))

    def multipart_request(method: str, target: str) -> bool:
        return "uploadId=" in target or "partNumber=" in target

    with FaultProxy(moto_endpoint, seed=2, fail_rate=0.3, match=multipart_request) as proxy:
        ok(run(s3cli, "backup", src, VAULT_S3_ENDPOINT=proxy.url))
        faults = proxy.counts["slowdown"] + proxy.counts["error"] + proxy.counts["reset"]
    assert faults > 0, proxy.counts
    assert multipart_uploads(s3cli) == []
    assert max(keys(s3cli, "repo/data/").values()) > s3_module.MULTIPART_THRESHOLD
    s3cli("restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, restored(tmp_path / "r", src))


def wire_counts(proxy: FaultProxy) -> dict[str, int]:
    return {k: proxy.counts[f"by_type:{k}"] for k in ("PUT", "GET", "LIST", "DELETE", "HEAD")}


def test_json_request_counts_are_the_requests_sent(s3_repo, moto_endpoint, tmp_path):
    """``--json`` "requests" against what actually went over the wire (the proxy counts every HTTP request).
    The lock is released after the JSON is made, so its DELETE is on the wire only."""
    src = random_tree(tmp_path / "src", seed=8, files=6, size=MiB, small=20)
    with FaultProxy(moto_endpoint, seed=1) as proxy:  # no faults
        # --s3-endpoint wins over VAULT_S3_ENDPOINT (set to the server itself): else the proxy would see nothing
        b = json.loads(ok(run(s3_repo, "--json", "backup", src, "--s3-endpoint", proxy.url)).stdout)
    wire = wire_counts(proxy)
    assert b["requests"]["PUT"] > 0 and b["bytes_up"] > 6 * MiB
    assert {k: v for k, v in b["requests"].items() if k != "DELETE"} == \
        {k: v for k, v in wire.items() if k != "DELETE"}, (b["requests"], wire)

    with FaultProxy(moto_endpoint, seed=1, fail_rate=0.2) as proxy:  # now every retry is a request too
        r = json.loads(ok(run(s3_repo, "--json", "restore", "latest", "--target", tmp_path / "r",
                              VAULT_S3_ENDPOINT=proxy.url)).stdout)
    wire = wire_counts(proxy)
    assert_trees_equal(src, restored(tmp_path / "r", src))
    if r["requests"]["GET"] != wire["GET"]:
        pytest.xfail(f"retried requests are not counted: restore --json says GET {r['requests']['GET']}, the "
                     f"wire saw {wire['GET']} (CountingBackend sits above RetryBackend)")


def test_a_listing_counts_one_list_request_a_page(s3_repo, moto_endpoint, tmp_path):
    """S3 answers a listing 1,000 keys a request: --json counted one LIST per listing, 7 where the server got 12
    for 1,000 snapshots. Now a page is a request."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:  # (keys vault ignores but lists: stats lists the whole store)
        list(pool.map(lambda i: s3_repo.client.put_object(Bucket=s3_repo.bucket, Key=f"repo/zz/{i:04}", Body=b"x"),
                      range(2100)))
    with FaultProxy(moto_endpoint, seed=1) as proxy:
        st = json.loads(ok(run(s3_repo, "--json", "stats", VAULT_S3_ENDPOINT=proxy.url)).stdout)
    assert st["requests"]["LIST"] == wire_counts(proxy)["LIST"] >= 4, (st["requests"], wire_counts(proxy))


def test_endpoint_from_boto3s_own_variable(s3_repo, moto_endpoint, tmp_path):
    """With no --s3-endpoint / VAULT_S3_ENDPOINT, boto3's AWS_ENDPOINT_URL_S3 is honoured."""
    p = ok(run(s3_repo, "--json", "snapshots", VAULT_S3_ENDPOINT="", AWS_ENDPOINT_URL_S3=moto_endpoint))
    assert json.loads(p.stdout) == []


class _Canned:
    """A server answering every request with the same raw bytes, then closing (FIN): a store's exact answer."""

    def __init__(self, raw: bytes):
        import socket
        import threading

        self.raw = raw
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.url = f"http://127.0.0.1:{self.ls.getsockname()[1]}"
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        import socket

        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    break
                buf += d
            c.sendall(self.raw)
            c.shutdown(socket.SHUT_WR)
            c.close()

    def close(self) -> None:
        self.ls.close()


@pytest.fixture
def aws_keys(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)


def test_a_chunked_body_without_content_length_is_read(aws_keys):
    """A gateway in front of a store may send a GET body chunked, with no Content-Length (HTTP/1.1 allows it;
    the chunks frame it): read, not refused on every try as 'cut short' (review of the S3 checks)."""
    body = b"hello pack bytes"
    srv = _Canned(b'HTTP/1.1 200 OK\r\nETag: "0123456789abcdef0123456789abcdef"\r\nTransfer-Encoding: chunked\r\n\r\n'
                  + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    try:
        assert s3_module.S3Backend("bkt", "p", endpoint=srv.url).get("data/aa") == body
    finally:
        srv.close()


def test_a_listing_that_says_more_follows_without_a_token_is_not_complete(aws_keys):
    """A store answering ListObjectsV2 the V1 way (NextMarker, no continuation token) ends botocore's paginator
    after a page that says more follows: taken as the whole listing, catalog sync would drop the index segments
    past it and prune delete their packs as unindexed (review of the S3 checks)."""
    from vault.errors import TransientError

    body = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<Name>bkt</Name><Prefix>p/index/</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>"
            b"<NextMarker>p/index/aa</NextMarker><Contents><Key>p/index/aa</Key><Size>5</Size></Contents>"
            b"</ListBucketResult>")
    srv = _Canned(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
    try:
        with pytest.raises(TransientError):
            list(s3_module.S3Backend("bkt", "p", endpoint=srv.url).list("index/"))
    finally:
        srv.close()


def test_pack_reads_cut_for_good_stop_repair_and_verify_never_damage(s3cli, moto_endpoint, tmp_path):
    """Every read of a pack is cut inside its head for longer than the retries last (a broken middlebox): a
    network fault, so verify and repair stop with exit 1 -- repair wrote a 'repaired' snapshot without the files
    it could not read, and verify said damage (review of the S3 checks)."""
    s3cli("init", *FAST_INIT, "--pack-size", "1")
    src = random_tree(tmp_path / "src", seed=3, files=3, size=300_000, small=3)
    ok(run(s3cli, "backup", src))
    before = json.loads(ok(run(s3cli, "--json", "snapshots")).stdout)
    data_get = lambda m, t: m == "GET" and "/data/" in t  # noqa: E731
    with FaultProxy(moto_endpoint, seed=1, headcut_rate=1.0, match=data_get, max_consecutive=10_000) as proxy:
        via = {"VAULT_S3_ENDPOINT": proxy.url, "VAULT_CACHE_DIR": str(tmp_path / "cold"), "VAULT_CONNECTIONS": "2"}
        v = run(s3cli, "--json", "verify", "--read-data", **via)
        r = run(s3cli, "--json", "repair", "snapshots", **via)
    assert v.returncode == 1 and r.returncode == 1, (v.stderr[-800:], r.stderr[-800:])
    assert [s["id"] for s in json.loads(ok(run(s3cli, "--json", "snapshots")).stdout)] == [s["id"] for s in before]


def test_a_bucket_deleted_mid_restore_is_an_error_not_damage(s3_repo, tmp_path, monkeypatch):
    """The store going away while a restore runs (the bucket deleted, for real, on the server) made every pack
    "not found": exit 20 with every file called damaged. Like a local disk unmounted mid-run: exit 1."""
    src = make_tree(tmp_path / "src", {f"f{i}": random.Random(i).randbytes(50_000) for i in range(4)})
    s3_repo("backup", src)
    real = s3_module.S3Backend.get
    gone = []

    def delete_bucket_first(self, name, *args, **kw):
        if name.startswith("data/") and not gone:
            gone.append(name)
            for key in keys(s3_repo):
                s3_repo.client.delete_object(Bucket=s3_repo.bucket, Key=key)
            s3_repo.client.delete_bucket(Bucket=s3_repo.bucket)
        return real(self, name, *args, **kw)

    monkeypatch.setattr(s3_module.S3Backend, "get", delete_bucket_first)
    res = s3_repo("restore", "latest", "--target", tmp_path / "out", ok=1)
    assert gone and "damaged" not in res.err and "is gone" in res.err, res.err


def test_structure_verify_loads_an_s3_repositorys_trees_side_by_side(s3cli, moto_endpoint, tmp_path):
    """A remote verify fetches every directory listing (one request each): they go several at a time, not one
    round trip after another (a copy with many snapshots took minutes of round trips)."""
    s3cli("init", *FAST_INIT)
    src = tmp_path / "src"
    for i in range(60):
        (src / f"d{i:02}").mkdir(parents=True)
        (src / f"d{i:02}" / "f").write_text(f"file {i}\n")
    ok(run(s3cli, "backup", src))
    with FaultProxy(moto_endpoint, seed=1, latency_rate=1.0, latency=(0.02, 0.03)) as proxy:
        v = json.loads(ok(run(s3cli, "--json", "verify", VAULT_S3_ENDPOINT=proxy.url)).stdout)
        assert v["ok"] is True and v["trees"] >= 61, v
        assert proxy.counts["by_type:GET"] >= 61 and proxy.counts["max_in_flight"] >= 4, proxy.counts


def test_a_new_machine_walks_an_s3_repositorys_trees_side_by_side(s3cli, moto_endpoint, tmp_path):
    """A cold cache (a new machine, the disaster-recovery case) fetches directory listings several at a time
    ahead of the walk, and lists and restores exactly what a warm one does."""
    s3cli("init", *FAST_INIT)
    src = tmp_path / "src"
    for i in range(60):
        (src / f"d{i % 6}" / f"e{i:02}").mkdir(parents=True)
        (src / f"d{i % 6}" / f"e{i:02}" / "f").write_text(f"file {i}\n")
    ok(run(s3cli, "backup", src))
    warm = json.loads(ok(run(s3cli, "--json", "ls", "latest")).stdout)
    with FaultProxy(moto_endpoint, seed=1, latency_rate=1.0, latency=(0.02, 0.03)) as proxy:
        via = {"VAULT_S3_ENDPOINT": proxy.url}
        cold = json.loads(ok(run(s3cli, "--json", "ls", "latest", VAULT_CACHE_DIR=str(tmp_path / "c1"), **via)).stdout)
        assert cold["entries"] == warm["entries"] and len(warm["entries"]) > 120
        assert proxy.counts["max_in_flight"] >= 4, proxy.counts
        ok(run(s3cli, "restore", "latest", "--target", tmp_path / "r", VAULT_CACHE_DIR=str(tmp_path / "c2"), **via))
    assert_trees_equal(src, restored(tmp_path / "r", src))


def test_a_new_machines_first_sync_fetches_manifests_and_segments_side_by_side(s3cli, moto_endpoint, tmp_path):
    """A new machine read every snapshot manifest and index segment one round trip after another (2 a snapshot:
    90 s for 1,000 snapshots at 25 ms a request, before `snapshots` printed anything)."""
    s3cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"f": b"0"})
    for i in range(12):
        (src / "f").write_text(str(i))
        ok(run(s3cli, "backup", src, "--time", f"2026-01-01T{i:02}:00:00Z"))
    warm = json.loads(ok(run(s3cli, "--json", "snapshots")).stdout)
    with FaultProxy(moto_endpoint, seed=5, latency_rate=1.0, latency=(0.02, 0.03)) as proxy:
        cold = json.loads(ok(run(s3cli, "--json", "snapshots", VAULT_CACHE_DIR=str(tmp_path / "c1"),
                                 VAULT_S3_ENDPOINT=proxy.url)).stdout)
        assert proxy.counts["max_in_flight"] >= 3, proxy.counts
    assert cold == warm and len(cold) == 12


def _sigterm_while_an_upload_stalls(s3cli, moto_endpoint, *args) -> tuple[int, float, str]:
    """Run vault with ``args`` through a proxy that holds every data PUT for 60 s; SIGTERM it once an upload is
    held: (exit code, seconds from the signal to the exit, stderr)."""
    import signal

    stalled = lambda method, target: method == "PUT" and "/data/" in target  # noqa: E731
    proxy = FaultProxy(moto_endpoint, seed=4, latency_rate=1.0, latency=(60, 60), match=stalled)
    try:
        p = popen(s3cli, *args, VAULT_S3_ENDPOINT=proxy.url)
        deadline = time.monotonic() + 60
        while proxy.counts["latency"] < 1 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None and proxy.counts["latency"] >= 1, "no upload was held"
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
        return p.returncode, time.monotonic() - t0, err
    finally:
        proxy.stop()


def test_one_stop_signal_does_not_wait_for_a_stalled_upload(s3cli, moto_endpoint, tmp_path):
    """One SIGTERM (systemd's stop, `timeout`) while a pack upload got no answer: vault waited for the upload's
    retries (120 s) before exiting 143 -- systemd kills it after 90 s, leaving its lock. Stopped, it no longer
    waits for uploads under way: their packs, if they land, name nothing (the next backup adopts them)."""
    s3cli("init", *FAST_INIT)
    src = random_tree(tmp_path / "src", seed=9, files=3, size=2 * MiB)
    code, took, err = _sigterm_while_an_upload_stalls(s3cli, moto_endpoint, "backup", src)
    assert code == 143 and took < 15, (code, round(took, 1), err)
    assert err.strip() == "vault: terminated", err
    assert count(s3cli, "locks/") == 0
    ok(run(s3cli, "backup", src))


def test_aws_configuration_problems_and_archive_classes_are_one_line_errors(s3cli, tmp_path):
    """A missing profile, half a key pair or a credential process that fails came out as 'internal error'; a
    region like 'us east' was blamed on the endpoint; a pack in GLACIER read as 'access denied'. Now each is
    one line naming what is wrong, and an archive class is refused before anything is written."""
    s3cli("init", *FAST_INIT)
    cases = [({"AWS_PROFILE": "no-such-profile"}, 1, "AWS configuration"),
             ({"AWS_SECRET_ACCESS_KEY": ""}, 1, "AWS configuration"),
             ({"AWS_DEFAULT_REGION": "us east"}, 2, "bad AWS region")]
    for env, code, words in cases:
        p = run(s3cli, "snapshots", **env)
        assert p.returncode == code and words in p.stderr and "internal error" not in p.stderr, (env, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    src = make_tree(tmp_path / "src", {"a": b"x"})
    p = run(s3cli, "--s3-storage-class", "GLACIER", "backup", src)
    assert p.returncode == 2 and "archive class" in p.stderr, p.stderr
    assert json.loads(ok(run(s3cli, "--json", "snapshots")).stdout) == []


def test_an_endpoint_that_only_redirects_is_a_one_line_error(s3cli, tmp_path):
    """An http endpoint behind an http->https redirect (nginx, Traefik) answers every request with a 301 and no
    bucket region: botocore's region redirector asked again and again until Python's recursion limit, and
    vault said 'a directory tree nests more than 9,000 levels deep'."""
    import http.server
    import threading

    class Redirect(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            body = b"<html><body>301 Moved Permanently</body></html>"
            self.send_response(301)
            self.send_header("Location", "https://127.0.0.1" + self.path)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for args in (["snapshots"], ["init", *FAST_INIT]):
            p = run(s3cli, *args, timeout=120, VAULT_S3_ENDPOINT=url)
            assert p.returncode == 1 and "redirect" in p.stderr and "levels deep" not in p.stderr, p.stderr
            assert "internal error" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    finally:
        server.shutdown()


def test_folder_markers_are_no_objects_of_the_repository(s3cli):
    """Zero-byte "folder" objects (the S3 console's "Create folder", rclone mkdir, s3fs): init refused a prefix
    holding only its own marker ("not empty"), and a locks/ marker made prune and unlock fail with 'internal
    error: invalid object name'."""
    bucket, prefix, client = s3cli.bucket, s3cli.prefix, s3cli.client
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=f"{prefix}/", Body=b"")
    s3cli("init", *FAST_INIT)
    client.put_object(Bucket=bucket, Key=f"{prefix}/locks/", Body=b"")
    for args in (["prune"], ["unlock"], ["--json", "verify"]):
        ok(run(s3cli, *args))
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/locks/").get("Contents", [])}
    assert keys == {f"{prefix}/locks/"}


def test_credentials_scoped_to_the_prefix_can_init(s3cli, moto_endpoint, tmp_path):
    """operations.md asks for credentials that can list, get, put and delete objects under the prefix. With
    such a policy (s3:ListBucket only with an s3:prefix condition) AWS answers HeadBucket with 403, and init,
    the one command that asked, failed: 'access denied for HEAD-BUCKET'."""
    import http.client
    import http.server
    import threading

    up = moto_endpoint.removeprefix("http://")

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.command == "HEAD" and self.path.strip("/") == s3cli.bucket:
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            conn = http.client.HTTPConnection(up, timeout=30)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers))
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, *args):
            pass

    s3cli.client.create_bucket(Bucket=s3cli.bucket)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        via = {"VAULT_S3_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}
        ok(run(s3cli, "init", *FAST_INIT, **via))
        assert run(s3cli, "init", *FAST_INIT, **via).returncode == 1  # (an existing one is still refused)
    finally:
        server.shutdown()
    src = make_tree(tmp_path / "src", {"a": b"scoped"})
    ok(run(s3cli, "backup", src))
    assert len(json.loads(ok(run(s3cli, "--json", "snapshots")).stdout)) == 1


def test_a_prefix_with_spaces_and_other_characters_keys_may_hold(s3cli, tmp_path):
    """s3://bucket/backups/Server 1 (or a+b, host@site, ünï) was refused as 'malformed repository URL': the
    prefix had to pass the format's own object-name rules. Any character S3 keys take is allowed now, except
    control characters and URL syntax (? #); every key stays below PREFIX/."""
    prefix = "backups/Server 1+ünï@site"
    cli = Cli(s3cli.capfd, f"s3://{s3cli.bucket}/{prefix}", tmp_path / "cache2")
    src = make_tree(tmp_path / "src", {"a": b"spaced"})
    cli("init", *FAST_INIT)
    cli("backup", src)
    cli("restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, restored(tmp_path / "r", src))
    keys = [o["Key"] for o in s3cli.client.list_objects_v2(Bucket=s3cli.bucket).get("Contents", [])]
    assert keys and all(k.startswith(prefix + "/") for k in keys), keys
    for bad in ("x?y", "a/../b", "a#b"):
        assert cli.proc("--repo", f"s3://{s3cli.bucket}/{bad}", "snapshots").returncode == 2


def test_one_stop_signal_does_not_wait_for_a_stalled_upload_of_a_copy(s3cli, moto_endpoint, tmp_path):
    """The same for `copy` to a store that stalls: it waited for the upload's retries before exiting."""
    s3cli("init", *FAST_INIT)
    local = Cli(s3cli.capfd, tmp_path / "local", tmp_path / "local-cache")
    local("init", *FAST_INIT)
    local("backup", random_tree(tmp_path / "src", seed=10, files=3, size=2 * MiB))
    code, took, err = _sigterm_while_an_upload_stalls(s3cli, moto_endpoint, "--repo", local.repo, "copy", "--to",
                                                      s3cli.repo)
    assert code == 143 and took < 15, (code, round(took, 1), err)
    assert count(s3cli, "locks/") == 0
    ok(run(s3cli, "--repo", local.repo, "copy", "--to", s3cli.repo))


def test_a_gateway_that_cuts_every_read_at_the_same_point_is_no_damage(s3cli, moto_endpoint, tmp_path):
    """A cut that repeats byte for byte (a cache that always sends the first half) read the same three times,
    so it was taken for damage: verify exit 20, and repair wrote 'repaired' snapshots with an empty tree, which
    `restore latest` then picked. What reads back the same but fails its check is damage only when it is as
    long as the object the store holds."""
    s3cli("init", *FAST_INIT)
    src = random_tree(tmp_path / "src", seed=11, files=3, size=300_000, small=10)
    ok(run(s3cli, "backup", src))
    before = json.loads(ok(run(s3cli, "--json", "snapshots")).stdout)
    cut = lambda m, t: m == "GET" and ("/index/" in t or t.split("?")[0].endswith("/config"))  # noqa: E731
    with FaultProxy(moto_endpoint, seed=14, shortbody_rate=1.0, max_consecutive=10_000, match=cut) as proxy:
        via = {"VAULT_S3_ENDPOINT": proxy.url, "VAULT_CACHE_DIR": str(tmp_path / "cold")}
        v = run(s3cli, "verify", **via)
        r = run(s3cli, "repair", **via)
        assert proxy.counts["shortbody"] >= 3, proxy.counts
    # (exit 1, not damage: a whole read whose bytes cannot all be there, or a ranged one whose range says so)
    assert v.returncode == 1 and ("does not return it whole" in v.stderr or "got bytes" in v.stderr), \
        (v.returncode, v.stderr[-600:])
    assert r.returncode == 1, (r.returncode, r.stdout[-600:], r.stderr[-600:])
    assert json.loads(ok(run(s3cli, "--json", "snapshots")).stdout) == before
    assert json.loads(ok(run(s3cli, "--json", "verify")).stdout)["ok"] is True


def test_a_reset_inside_an_error_answers_body_is_transient_not_an_internal_error(monkeypatch):
    """A 404 whose XML body is cut by a connection reset: botocore reads an error's body outside its own
    handlers, and urllib3's ProtocolError escaped as "internal error: ProtocolError", exit 1, not retried."""
    import socket
    import struct
    import threading

    from vault.backend.s3 import S3Backend
    from vault.errors import TransientError

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    body = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>' + b" " * 2000 + b"</Error>"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body[: len(body) // 2])
            time.sleep(0.1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # (a reset)

    threading.Thread(target=serve, daemon=True).start()
    try:
        backend = S3Backend("bkt", "p", endpoint=f"http://127.0.0.1:{server.getsockname()[1]}")
        with pytest.raises(TransientError):  # (the retry layer above the backend retries it then)
            backend.get("config")
    finally:
        server.close()
