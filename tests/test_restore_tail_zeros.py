"""restore leaves all-zero 64 KiB runs as holes (restorer._data_runs) and then gives the file its recorded size
(restorer._finish_file: ftruncate when the last written byte is not the end). A file whose end is zeros -- a
disk image, a preallocated database, a log rotated by truncation -- must come back at its full size, byte for
byte, not cut after its last non-zero run."""

from __future__ import annotations

import os

import pytest


@pytest.mark.parametrize("layout", ["data-then-zeros", "only-zeros", "zeros-inside"])
def test_files_ending_in_zeros_are_restored_whole(repo, tmp_path, layout):
    src = tmp_path / "src"
    src.mkdir()
    data = {"data-then-zeros": os.urandom(100_000) + bytes(700_000),
            "only-zeros": bytes(3 << 20),
            "zeros-inside": os.urandom(10_000) + bytes(500_000) + os.urandom(10_000)}[layout]
    (src / "f").write_bytes(data)
    sid = repo("--json", "backup", src).json["snapshot_id"]
    target = tmp_path / "restored"
    repo("restore", sid, "--target", target)
    out = (target / str(src).lstrip("/") / "f") if (target / str(src).lstrip("/")).exists() else target / "f"
    got = out.read_bytes()
    assert len(got) == len(data), f"restored {len(got)} bytes of {len(data)}"
    assert got == data
