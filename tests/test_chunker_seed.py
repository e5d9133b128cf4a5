"""Chunk boundaries depend on a per-repository secret (MasterKeys.chunker_seed XORed into the gear table,
docs/format.md): with a fixed or shared seed, the sizes of a file's chunks -- visible to whoever holds the
store, as the lengths of the blocks in its packs -- fingerprint known files (the CDC fingerprinting attack
restic and borg also defend against). Two repositories initialised independently must cut the same data
differently."""

from __future__ import annotations

import os

from conftest import FAST_INIT, PASSWORD, Cli

from vault.backend.local import LocalBackend
from vault.repository import Repository


def _chunk_sizes(repo_dir) -> list[int]:
    r = Repository.open(LocalBackend(str(repo_dir)), PASSWORD.encode())
    return sorted(e.raw_length for sid in r.list_index() for _, e in r.load_index(sid).entries() if e.kind == "D")


def test_independent_repositories_cut_the_same_file_at_different_places(capfd, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(12 << 20))
    sizes = []
    for name in ("a", "b"):
        c = Cli(capfd, tmp_path / f"repo-{name}", tmp_path / f"cache-{name}")
        c("init", *FAST_INIT)
        c("backup", src)
        sizes.append(_chunk_sizes(tmp_path / f"repo-{name}"))
    assert len(sizes[0]) > 2 and sum(sizes[0]) == sum(sizes[1]) == 12 << 20
    assert sizes[0] != sizes[1], "both repositories cut the file into the same chunks: the chunker seed is not secret"
