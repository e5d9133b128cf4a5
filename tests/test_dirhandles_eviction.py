"""dirhandles keeps at most ``limit`` directory descriptors and evicts only idle ones (dirhandles._evict). With
the default limit (512) no test ever evicted: a restore of more directories than that (or under a low
``ulimit -n``: the limit is a quarter of it) closing a descriptor still in use would write the next files
through a closed -- or reused, i.e. *another* directory's -- descriptor. Small limits make eviction happen."""

from __future__ import annotations

import os
import signal

import pytest

from vault.dirhandles import DirHandles


@pytest.fixture(autouse=True)
def deadline():
    """A broken eviction can loop forever (the root evicted: _acquire then never finds an open ancestor)."""
    def boom(*_):
        raise TimeoutError("DirHandles did not return within 20 s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _tree(root):
    for p in ("a/x/deep", "b/y", "c", "d", "e/z"):
        os.makedirs(root / p)


def test_a_held_descriptor_survives_eviction_of_others(tmp_path):
    _tree(tmp_path)
    h = DirHandles(os.fsencode(tmp_path), limit=2)
    try:
        with h.at(b"a/x") as held:
            ino = os.stat(tmp_path / "a" / "x").st_ino
            for p in (b"b", b"c", b"d", b"b/y", b"e/z", b"a/x/deep", b"e"):
                with h.at(p) as fd:
                    assert os.fstat(fd).st_ino == os.stat(tmp_path / os.fsdecode(p)).st_ino
                # fds freed by eviction are reused by the next open: a closed held fd would now name another dir
                spare = os.open(tmp_path / "c", os.O_RDONLY)
                try:
                    assert os.fstat(held).st_ino == ino, f"held descriptor now names another directory (after {p!r})"
                finally:
                    os.close(spare)
        with h.at(b"") as root:  # the root stays open too
            assert os.fstat(root).st_ino == os.stat(tmp_path).st_ino
    finally:
        h.close()


def test_creating_through_a_held_descriptor_after_evictions_lands_in_its_directory(tmp_path):
    _tree(tmp_path)
    h = DirHandles(os.fsencode(tmp_path), limit=2)
    try:
        with h.at(b"b/y") as held:
            for p in (b"c", b"d", b"e", b"e/z", b"a", b"a/x"):
                with h.at(p):
                    pass
            fd = os.open("marker", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=held)
            os.close(fd)
        assert (tmp_path / "b" / "y" / "marker").exists()
        assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("marker")) == ["b/y/marker"]
    finally:
        h.close()
