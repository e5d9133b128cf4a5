"""Deduplication: identical data is stored once (within a backup, across backups, across hosts), an insertion
near the start of a file costs only the chunks around it; the chunker's own guarantees."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from vault.chunker import Chunker, ChunkerParams

MiB = 1024 * 1024


def dir_size(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def test_same_data_twice_in_one_backup_is_stored_once(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(20 * MiB)
    (src / "one.bin").write_bytes(data)
    (src / "two.bin").write_bytes(data)
    (src / "sub").mkdir()
    (src / "sub" / "three.bin").write_bytes(data)
    before = dir_size(repo.repo)
    out = repo("--json", "backup", src).json
    assert out["files_new"] == 3
    assert out["bytes_processed"] == 60 * MiB
    assert out["bytes_added"] < 20 * MiB * 1.05, out
    grown = dir_size(repo.repo) - before
    assert grown < 20 * MiB * 1.05, f"repository grew by {grown} bytes for 20 MiB of unique data"
    # and the data is really there
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    for rel in ("one.bin", "two.bin", "sub/three.bin"):
        assert (r / src.relative_to("/") / rel).read_bytes() == data


def test_insert_at_start_adds_little(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(1234)
    data = rnd.randbytes(30 * MiB)
    f = src / "big.bin"
    f.write_bytes(data)
    first = repo("--json", "backup", src).json
    assert first["bytes_added"] > 30 * MiB * 0.95
    f.write_bytes(rnd.randbytes(100) + data)
    before = dir_size(repo.repo)
    second = repo("--json", "backup", src).json
    assert second["files_changed"] == 1
    assert second["bytes_added"] < 30 * MiB * 0.15, second
    assert dir_size(repo.repo) - before < 30 * MiB * 0.15


def test_append_and_middle_edit_add_little(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(99)
    data = bytearray(rnd.randbytes(24 * MiB))
    f = src / "big.bin"
    f.write_bytes(data)
    repo("backup", src)
    data[12 * MiB : 12 * MiB + 10] = b"0123456789"
    data += rnd.randbytes(1000)
    f.write_bytes(data)
    out = repo("--json", "backup", src).json
    assert out["bytes_added"] < 24 * MiB * 0.25, out


def test_same_data_from_two_hosts_is_stored_once(repo, tmp_path):
    rnd = random.Random(7)
    files = {f"f{i}.bin": rnd.randbytes(2 * MiB + i * 1000) for i in range(4)}
    a, b = tmp_path / "host-a" / "data", tmp_path / "host-b" / "elsewhere"
    for d in (a, b):
        d.mkdir(parents=True)
        for name, content in files.items():
            (d / name).write_bytes(content)
    first = repo("--json", "backup", a, "--host", "alpha").json
    total = sum(len(c) for c in files.values())
    assert first["bytes_added"] > total * 0.95
    before = dir_size(repo.repo)
    second = repo("--json", "backup", b, "--host", "beta").json
    assert second["files_new"] == 4
    assert second["bytes_added"] < 64 * 1024, second  # trees only
    assert dir_size(repo.repo) - before < 256 * 1024
    snaps = repo("--json", "snapshots").json
    assert sorted(s["host"] for s in snaps) == ["alpha", "beta"]
    r = tmp_path / "r"
    repo("restore", "latest", "--host", "beta", "--target", r)
    for name, content in files.items():
        assert (r / b.relative_to("/") / name).read_bytes() == content


# --- the chunker itself ------------------------------------------------------------------------------------
PARAMS = ChunkerParams()  # 512 KiB / 1 MiB / 8 MiB


@pytest.fixture(scope="module")
def buf64() -> bytes:
    return random.Random(42).randbytes(64 * MiB)


def cut(data: bytes, seed: int, params: ChunkerParams = PARAMS) -> list[bytes]:
    return [bytes(c) for c in Chunker(params, seed).cut_bytes(data)]


def boundaries(chunks: list[bytes]) -> list[int]:
    out, pos = [], 0
    for c in chunks:
        pos += len(c)
        out.append(pos)
    return out


def test_stats_dedup_ratio_counts_what_the_snapshots_hold(repo, tmp_path):
    """Four snapshots of two copies of 1 MB of random data: 8 MB held, about 1 MB stored."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(MiB)
    (src / "r1").write_bytes(data)
    (src / "r2").write_bytes(data)
    for host in "abcd":
        repo("backup", src, "--host", host)
    d = repo("--json", "stats").json
    assert d["snapshots_bytes"] == 8 * MiB
    assert 7.5 < d["dedup_ratio"] <= 8.1, d
    assert 0.9 < d["compression_ratio"] <= 1.01, d


def test_chunker_concatenation_and_sizes(buf64):
    chunks = cut(buf64, 12345)
    assert b"".join(chunks) == buf64
    assert len(chunks) > 16
    for c in chunks[:-1]:
        assert PARAMS.min_size <= len(c) <= PARAMS.max_size, len(c)
    assert 0 < len(chunks[-1]) <= PARAMS.max_size
    mean = len(buf64) / len(chunks)
    assert PARAMS.avg_size / 2 < mean < PARAMS.avg_size * 2


def test_chunker_sizes_small_params():
    params = ChunkerParams(min_size=2048, avg_size=8192, max_size=32768)
    data = random.Random(5).randbytes(4 * MiB)
    chunks = cut(data, 777, params)
    assert b"".join(chunks) == data
    assert all(2048 <= len(c) <= 32768 for c in chunks[:-1])
    # zeros (no content to cut on) are cut at max_size
    zeros = cut(bytes(200_000), 777, params)
    assert b"".join(zeros) == bytes(200_000)
    assert all(len(c) <= 32768 for c in zeros)


def test_chunker_deterministic(buf64):
    a = boundaries(cut(buf64, 12345))
    b = boundaries(cut(buf64, 12345))
    assert a == b
    # a shared instance used twice gives the same answer too
    ch = Chunker(PARAMS, 12345)
    assert boundaries([bytes(c) for c in ch.cut_bytes(buf64)]) == boundaries([bytes(c) for c in ch.cut_bytes(buf64)])


def test_chunker_stream_equals_buffer(buf64, tmp_path):
    f = tmp_path / "data"
    f.write_bytes(buf64[: 20 * MiB])
    ch = Chunker(PARAMS, 999)
    with open(f, "rb", buffering=0) as fh:
        streamed = [hashlib.sha256(c).digest() for c in ch.cut_stream(fh)]
    assert streamed == [hashlib.sha256(c).digest() for c in cut(buf64[: 20 * MiB], 999)]


def test_chunker_seed_changes_boundaries(buf64):
    a = boundaries(cut(buf64, 12345))
    b = boundaries(cut(buf64, 54321))
    assert a != b
    # not merely shifted by one chunk: most boundaries differ
    assert len(set(a) & set(b)) < len(a) // 2


def test_chunker_shift_resistant(buf64):
    seed = 31337
    before = {hashlib.sha256(c).digest() for c in cut(buf64, seed)}
    edited = buf64[:1000] + os.urandom(137) + buf64[1000:]
    after = [hashlib.sha256(c).digest() for c in cut(edited, seed)]
    unchanged = sum(1 for h in after if h in before)
    assert unchanged >= len(after) - 3, f"only {unchanged} of {len(after)} chunks survived a 137-byte insertion"
    # deletion in the middle
    edited = buf64[: 30 * MiB] + buf64[30 * MiB + 5000 :]
    after = [hashlib.sha256(c).digest() for c in cut(edited, seed)]
    unchanged = sum(1 for h in after if h in before)
    assert unchanged >= len(after) - 3


@pytest.mark.parametrize("params", [ChunkerParams(), ChunkerParams(4096, 16384, 65536)])
def test_chunker_fd_equals_buffer_across_long_chunks(params, tmp_path):
    """cut_fd reads through a buffer smaller than max_size: chunks longer than it (zero runs, repeated text)
    take the temporary large buffer, and every cut is still the one chunking the whole file at once gives,
    also when the caller keeps each view until it asks for the next."""
    rnd = random.Random(11)
    big = 3 * params.max_size
    data = b"".join([rnd.randbytes(big // 2), bytes(big), rnd.randbytes(params.avg_size * 3 + 17),
                     b"abc" * (big // 3), bytes(params.max_size - 1), rnd.randbytes(big)])
    f = tmp_path / "f"
    f.write_bytes(data)
    c = Chunker(params, 99)
    want = [bytes(x) for x in c.cut_bytes(data)]
    assert max(map(len, want)) == params.max_size  # the case under test happens
    with open(f, "rb") as fh:
        got = []
        for view in c.cut_fd(fh.fileno()):  # 'view' stays bound while the next is made
            got.append(bytes(view))
    assert got == want


def test_cut_fd_stops_at_its_limit(tmp_path):
    """A file another process keeps extending (truncate -s +256M in a loop) was read for ever: the backup never
    finished. cut_fd reads at most ``limit`` bytes; the reader allows twice the size plus 64 MiB."""
    from vault.chunker import Chunker, ChunkerParams

    data = os.urandom(300_000)
    p = tmp_path / "f"
    p.write_bytes(data)
    ch = Chunker(ChunkerParams(min_size=1024, avg_size=4096, max_size=16384), 7)
    with open(p, "rb") as f:
        got = b"".join(bytes(c) for c in ch.cut_fd(f.fileno(), limit=123_457))
    assert got == data[:123_457]
    with open(p, "rb") as f:
        assert b"".join(bytes(c) for c in ch.cut_fd(f.fileno())) == data


def _sparse_file(path: Path, layout: list[tuple[str, int]], rnd: random.Random) -> bytes:
    """Write ``layout`` ((\"data\" | \"hole\", length), ...) as a file with real holes; its content."""
    content = bytearray()
    with open(path, "wb") as f:
        for kind, n in layout:
            if kind == "data":
                chunk = rnd.randbytes(n)
                f.write(chunk)
                content += chunk
            else:
                f.seek(n, os.SEEK_CUR)
                content += bytes(n)
        f.truncate(len(content))
    return bytes(content)


@pytest.mark.parametrize("params", [ChunkerParams(), ChunkerParams(4096, 16384, 65536), ChunkerParams(64, 256, 1024)])
def test_holes_of_a_sparse_file_are_skipped_with_the_same_cuts(params, tmp_path):
    """A sparse file (a VM image: 100 GB, 10 GB used) was read, chunked and hashed whole, its holes too (4 GiB
    of holes: 22 s). Its holes are now skipped a zero chunk at a time, and the chunks are exactly those of the
    same bytes written out: a hole at the start, in the middle (aligned or not), at the end, one too short to
    skip, a limit inside a hole."""
    rnd = random.Random(5)
    m = params.max_size
    page = 4096
    u = max(m, MiB)  # (a hole is skipped from the first cut point after a read of up to 5 MiB: see cut_fd)
    layouts = [
        [("hole", 5 * u + 3 * page), ("data", 3 * page + 5)],
        [("data", 2 * m + 123), ("hole", 7 * u + page), ("data", page), ("hole", m // 2), ("data", 777)],
        [("data", page * 3), ("hole", 9 * u + 5 * page)],
        [("data", 100), ("hole", 4 * u), ("data", m + 1), ("hole", 3 * m + 17)],
    ]
    c = Chunker(params, 1234)
    zero = c.zero_chunk()
    skipped = 0
    if params.max_size == 1024:  # a seed whose zero runs the hash cuts (at 256 bytes, not at max_size): a
        c = Chunker(params, 942879118058144418)  # hole that ends at a zero-chunk boundary before data is the case
        zero = c.zero_chunk()
        assert len(zero) < params.max_size
        layouts.append([("hole", 4096 * len(zero)), ("data", 65536)])
        layouts.append([("data", 3000), ("hole", 4096 * len(zero)), ("data", 7000)])
    for i, layout in enumerate(layouts):
        f = tmp_path / f"f{i}"
        data = _sparse_file(f, layout, rnd)
        want = [bytes(x) for x in c.cut_bytes(data)]
        for limit in (None, len(data) // 2 + 3):
            with open(f, "rb") as fh:
                got = []
                for view in c.cut_fd(fh.fileno(), limit=limit, sparse=True):
                    skipped += view is zero
                    got.append(bytes(view))
            if limit is None:
                assert got == want, (i, [len(x) for x in got][:20], [len(x) for x in want][:20])
            else:
                assert b"".join(got) == data[:limit]
                assert got[:-2] == want[:len(got) - 2]
    if os.lseek(os.open(tmp_path / "f0", os.O_RDONLY), 0, os.SEEK_DATA) > 0:  # (the file system has holes)
        assert skipped > 10, "the holes were read and chunked"


def test_a_sparse_file_is_backed_up_like_the_same_bytes_written_out(repo, tmp_path):
    """The block lists of a sparse file and of its dense copy are the same (a snapshot of either deduplicates
    against the other), and the restore gives the bytes back."""
    from test_damage import layout

    rnd = random.Random(8)
    src = tmp_path / "src"
    src.mkdir()
    data = _sparse_file(src / "sparse.img", [("data", 3 * MiB + 5), ("hole", 40 * MiB + 4096), ("data", 12345),
                                             ("hole", 20 * MiB)], rnd)
    (src / "dense.img").write_bytes(data)
    repo("backup", src)
    files = {os.path.basename(p): bids for p, bids in layout(repo.repo).files.items()}
    assert files["sparse.img"] == files["dense.img"] and len(files["dense.img"]) > 5
    repo("restore", "latest", "--target", tmp_path / "out")
    for name in ("sparse.img", "dense.img"):
        assert (tmp_path / "out" / str(src).lstrip("/") / name).read_bytes() == data
