"""Restores onto a file system unlike ext4: exFAT (FUSE exfat-fuse on a loop device) -- case-insensitive, no hard
links, symlinks or special files. Skipped where exFAT cannot be made and mounted (no root, no exfat-fuse:
`apt-get install exfat-fuse exfatprogs`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import make_tree


@contextlib.contextmanager
def exfat(path: Path, size_mb: int = 64):
    mkfs, mount = shutil.which("mkfs.exfat"), shutil.which("mount.exfat-fuse")
    if not (mkfs and mount) or os.geteuid() != 0:
        pytest.skip("no exFAT here (needs root, mkfs.exfat and mount.exfat-fuse)")
    path.mkdir(parents=True, exist_ok=True)
    image = path.parent / (path.name + ".img")
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if loop.returncode != 0:
        image.unlink()
        pytest.skip("no loop device")
    dev = loop.stdout.strip()
    try:
        if (subprocess.run([mkfs, dev], capture_output=True).returncode != 0
                or subprocess.run([mount, dev, str(path)], capture_output=True).returncode != 0):
            pytest.skip("cannot make and mount exFAT here")
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], capture_output=True)

    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        image.unlink()


def _remount(path: Path) -> None:
    """Unplug and plug in again: unmount, then mount the same loop device at the same place."""
    dev = next(line.split()[0] for line in open("/proc/mounts") if line.split()[1] == str(path))
    subprocess.run(["umount", str(path)], check=True)
    subprocess.run([shutil.which("mount.exfat-fuse"), dev, str(path)], check=True, capture_output=True)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_names_that_differ_only_in_case_are_never_lost_silently(repo, tmp_path):
    """Restored onto exFAT, README and readme (and Photos/ and photos/) were one name: the second rename
    replaced the first file, the directories merged -- '4 files restored', exit 0, two files' data gone. The
    first of each is restored, the others named (exit 1); a second restore into the same target is the same."""
    src = make_tree(tmp_path / "src", {"README": b"upper", "readme": b"lower", "Photos": {"a.jpg": b"holiday"},
                                       "photos": {"a.jpg": b"work"}, "other": b"x"})
    repo("backup", src)
    with exfat(tmp_path / "stick") as stick:
        for _ in range(2):
            res = repo("restore", "latest", "--target", stick / "r", ok=1)
            got = _files(stick / "r" / src.relative_to("/"))
            assert got == {"Photos/a.jpg": b"holiday", "README": b"upper", "other": b"x"}, got
            assert "photos: cannot create directory: this file system takes its name" in res.err, res.err
            assert "readme: cannot restore: this file system takes its name for that of 'README'" in res.err
            assert not [p for p in (stick / "r").rglob(".vault-*")]


def test_hardlinks_become_copies_where_there_are_none_and_no_temp_file_stays(repo, tmp_path):
    """On exFAT a hardlinked file's other names were errors (exit 1) and their data was not restored; a fifo
    that the file system failed after creating it left a .vault-*.tmp file behind on every run."""
    src = make_tree(tmp_path / "src", {"a": b"shared"})
    os.link(src / "a", src / "b")
    os.mkfifo(src / "ff")
    repo("backup", src)
    with exfat(tmp_path / "stick") as stick:
        res = repo("-v", "restore", "latest", "--target", stick / "r", ok=False)
        assert _files(stick / "r" / src.relative_to("/")) == {"a": b"shared", "b": b"shared"}
        assert "restored as a copy of" in res.err and "cannot create hardlink" not in res.err, res.err
        assert not [p for p in (stick / "r").rglob(".vault-*")]


def test_force_reads_what_a_remounted_stick_hides(repo, tmp_path):
    """Two same-size files on exFAT swap contents with their mtimes kept, then the stick is plugged in again:
    inode numbers are handed out anew in lookup order and exFAT has no change time, so size, mtime, ctime and
    inode all match -- the next backup keeps the old content (a documented limit). `--force` reads them."""
    with exfat(tmp_path / "stick") as stick:
        src = make_tree(stick / "src", {"x": b"AAAA", "y": b"BBBB"})
        for p in (src / "x", src / "y"):
            os.utime(p, (1767225600, 1767225600))
        repo("backup", src)
        os.rename(src / "x", src / "t")
        os.rename(src / "y", src / "x")
        os.rename(src / "t", src / "y")
        for p in (src / "x", src / "y"):
            os.utime(p, (1767225600, 1767225600))
        _remount(stick)
        repo("backup", "--force", src)
        repo("restore", "latest", "--target", tmp_path / "r")
        assert (tmp_path / "r" / src.relative_to("/") / "x").read_bytes() == b"BBBB"
