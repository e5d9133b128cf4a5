"""The pack writer on a local store writes each pack as it fills (staged), so only the unwritten part of a
pack is in memory: the packs it stores are named by their hash, parse, and hold every block; a failure or a
close leaves no temp file behind; stores without staging (S3, wrappers) keep whole packs in memory."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from conftest import PASSWORD

from vault.backend import open_backend
from vault.backend.local import TEMP_PREFIX, LocalBackend
from vault.backend.memory import MemoryBackend
from vault.crypto import FAST_KDF
from vault.errors import PermanentError
from vault.pack import DATA, parse_pack
from vault.packwriter import SPILL, PackWriter
from vault.pack import pack_name
from vault.repository import Repository

MiB = 1 << 20


def _repo(backend, pack_size: int = 16 * MiB) -> Repository:
    return Repository.create(backend, PASSWORD.encode(), kdf=FAST_KDF, pack_size=pack_size, compression_level=0)


def _blocks(repo: Repository, n: int, size: int) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(n * size)
    return [(repo.block_id(d), d) for d in (rnd.randbytes(size) for _ in range(n))]


def _temp_files(root) -> list[str]:
    return [f for _, _, files in os.walk(root) for f in files if f.startswith(TEMP_PREFIX)]


def test_staged_packs_are_named_by_their_hash_and_hold_every_block(tmp_path):
    backend = open_backend(str(tmp_path / "r"), count=True)  # as the CLI opens it: retry + counting wrappers
    repo = _repo(backend)
    stages = []
    real_stage = backend.stage
    backend.stage = lambda d: stages.append(d) or real_stage(d)
    stored = []
    w = PackWriter(repo, lambda pid, size, entries: stored.append((pid, size, entries)), uploaders=0)
    blocks = _blocks(repo, 40, MiB + 123)  # ~40 MiB: three packs, each written out 4 MiB at a time
    for bid, data in blocks:
        w.add(DATA, bid, data)
    w.flush()
    w.close()
    assert stages and len(stored) == 3
    seen = {}
    for pid, size, entries in stored:
        raw = (tmp_path / "r" / pack_name(pid)).read_bytes()
        assert len(raw) == size and hashlib.sha256(raw).digest() == pid
        assert [e.block_id for e in parse_pack(raw, repo.cipher)] == [e.block_id for e in entries]
        for e in entries:
            seen[e.block_id] = repo.open_block(e, raw[e.offset : e.offset + e.length])
    assert seen == dict(blocks)
    assert _temp_files(tmp_path / "r") == []
    assert backend.inner.stats()["requests"]["PUT"] >= 3  # a staged pack is counted as one PUT


def test_small_packs_are_not_staged(tmp_path):
    backend = LocalBackend(tmp_path / "r")
    repo = _repo(backend)
    stages = []
    real_stage = backend.stage
    backend.stage = lambda d: stages.append(d) or real_stage(d)
    w = PackWriter(repo, lambda *a: None, uploaders=0)
    for bid, data in _blocks(repo, 3, SPILL // 4):
        w.add(DATA, bid, data)
    w.flush()
    assert stages == []


def test_a_failed_publish_leaves_no_temp_file(tmp_path):
    backend = LocalBackend(tmp_path / "r")
    repo = _repo(backend, pack_size=8 * MiB)
    real_stage = backend.stage

    def failing(d):
        staged = real_stage(d)

        def publish(name):  # fails before linking, leaving its temp file to the writer to remove
            raise PermanentError("disk full writing " + name)
        staged.publish = publish
        return staged
    backend.stage = failing
    w = PackWriter(repo, lambda *a: None, uploaders=0)
    with pytest.raises(PermanentError):
        for bid, data in _blocks(repo, 12, MiB):
            w.add(DATA, bid, data)
    w.close()
    assert _temp_files(tmp_path / "r") == []
    assert list(backend.list("data/")) == []


def test_close_without_flush_discards_the_staged_part(tmp_path):
    backend = LocalBackend(tmp_path / "r")
    repo = _repo(backend)
    w = PackWriter(repo, lambda *a: None, uploaders=0)
    for bid, data in _blocks(repo, 6, MiB):  # 6 MiB: one spill, not full
        w.add(DATA, bid, data)
    assert _temp_files(tmp_path / "r")  # the staged part is on disk ...
    w.close()
    assert _temp_files(tmp_path / "r") == []  # ... and gone: nothing references it
    assert list(backend.list("data/")) == []


def test_stores_without_staging_keep_the_whole_pack(tmp_path):
    repo = _repo(MemoryBackend())
    stored = []
    w = PackWriter(repo, lambda pid, size, entries: stored.append(pid), uploaders=0)
    for bid, data in _blocks(repo, 20, MiB):
        w.add(DATA, bid, data)
    w.flush()
    assert len(stored) == 2
    for pid in stored:
        assert hashlib.sha256(repo.backend.get(pack_name(pid))).digest() == pid


def test_a_pack_filled_while_another_thread_is_about_to_spill_it_is_stored_whole(tmp_path, monkeypatch):
    """Thread A decides a pack's first spill and is delayed; B's block fills the pack and stores it. A's late
    spill must not stage a second object, write a closed mapping, or free pages B is storing (the pack then
    got a name its bytes did not match)."""
    import threading
    import time

    from vault import packwriter

    repo = _repo(LocalBackend(tmp_path / "r"), pack_size=8 * MiB)
    stored = []
    w = PackWriter(repo, lambda pid, size, entries: stored.append((pid, size)), uploaders=0)
    rnd = random.Random(1)
    real, first = packwriter._Open.spill, threading.Event()

    def late_spill(self, end, final=False):
        if not final and not first.is_set():
            first.set()
            time.sleep(0.5)
        return real(self, end, final)

    monkeypatch.setattr(packwriter._Open, "spill", late_spill)
    errors = []

    def writer_a():
        try:
            for data in (rnd.randbytes(MiB) for _ in range(5)):
                w.add(DATA, repo.block_id(data), data)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    a = threading.Thread(target=writer_a)
    a.start()
    assert first.wait(10)
    big = random.Random(2).randbytes(3 * MiB + MiB // 2)
    w.add(DATA, repo.block_id(big), big)
    a.join()
    w.flush()
    w.close()
    assert not errors
    for pid, size in stored:
        raw = (tmp_path / "r" / pack_name(pid)).read_bytes()
        assert len(raw) == size and hashlib.sha256(raw).digest() == pid
        parse_pack(raw, repo.cipher)
    assert not [f for _, _, fs in os.walk(tmp_path) for f in fs if f.startswith(TEMP_PREFIX)]


def test_close_with_a_view_of_an_open_pack_still_held(tmp_path):
    """Ctrl-C while a block is sealed into a pack's buffer leaves a view of it in the interrupted frame (kept
    by the traceback); closing the writer then must not fail with BufferError (a backup printed 'internal
    error: BufferError' instead of exiting 130), and no temp file is left."""
    backend = LocalBackend(str(tmp_path / "r"))
    repo = _repo(backend)
    w = PackWriter(repo, lambda *a: None)
    bid, data = _blocks(repo, 1, 100_000)[0]
    w.add(DATA, bid, data)
    view = memoryview(next(op for op in w._open.values() if op is not None).buf)  # the interrupted frame's
    w.close()
    view.release()
    assert not _temp_files(tmp_path / "r")


def test_settled_says_whether_an_upload_is_still_unanswered(tmp_path):
    """A backup stopped by Ctrl-C names the packs it stored in one more index segment -- only when every
    upload had been answered: on a stalled store that step held the stop for minutes of retries (245 s against
    systemd's 90 s stop timeout). ``settled`` is what it asks."""
    import threading

    repo = _repo(MemoryBackend(), pack_size=MiB)
    go = threading.Event()
    w = PackWriter(repo, lambda *a: None, uploaders=1)
    real_upload = w._upload
    w._upload = lambda op: (go.wait(30), real_upload(op))[1]
    assert w.settled()
    for bid, data in _blocks(repo, 3, MiB // 2 + 7):  # (a pack full: handed to the uploader, which waits)
        w.add(DATA, bid, data)
    assert not w.settled()
    go.set()
    w.flush()
    assert w.settled()
    w.close()
