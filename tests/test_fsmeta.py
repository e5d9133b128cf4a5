"""fsmeta: metadata applied in the order that keeps it (unit level: the kernel rules differ for root)."""

from __future__ import annotations

import os
import stat

from vault import fsmeta
from vault.model import FILE, Node


def test_without_root_a_setgid_file_gets_its_group_before_its_mode(tmp_path, monkeypatch):
    """Not root, in a setgid directory of another group: the new file has that group, and chmod would clear
    S_ISGID. The snapshot's group (the user's own, usually) is set first, then the mode."""
    calls = []
    monkeypatch.setattr(fsmeta, "IS_ROOT", False)
    monkeypatch.setattr(os, "fchown", lambda fd, uid, gid: calls.append(("chown", uid, gid)))
    real_fchmod = os.fchmod
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: (calls.append(("chmod", mode)), real_fchmod(fd, mode)))
    gid = os.getegid()  # (the chown is only recorded: the group the file has is the one it must end with)
    node = Node(name=b"g", type=FILE, mode=0o2755, uid=1000, gid=gid, size=0, mtime_ns=0)
    path = tmp_path / "g"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        problems = fsmeta.apply_metadata(fd, node)
    finally:
        os.close(fd)
    assert calls[:2] == [("chown", -1, gid), ("chmod", 0o2755)], calls
    assert stat.S_IMODE(path.stat().st_mode) == 0o2755 and not problems


def test_without_root_a_dropped_setgid_bit_is_said(tmp_path, monkeypatch):
    monkeypatch.setattr(fsmeta, "IS_ROOT", False)
    monkeypatch.setattr(os, "fchown", lambda fd, uid, gid: None)
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: None)  # as the kernel does: the bit does not stick
    node = Node(name=b"g", type=FILE, mode=0o2755, uid=1000, gid=1000, size=0, mtime_ns=0)
    fd = os.open(tmp_path / "g", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        problems = fsmeta.apply_metadata(fd, node)
    finally:
        os.close(fd)
    assert any("setuid/setgid bit not kept" in p for p in problems), problems


def test_without_root_setgid_kept_for_another_group_is_said(tmp_path, monkeypatch):
    """Not a member of the snapshot's group: the chgrp fails, the file keeps this user's group and chmod keeps
    the bit for *that* group -- a different meaning from the snapshot's, so it is said."""
    monkeypatch.setattr(fsmeta, "IS_ROOT", False)

    def refuse(fd, uid, gid):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)
    node = Node(name=b"g", type=FILE, mode=0o2755, uid=1000, gid=os.getegid() + 4242, size=0, mtime_ns=0)
    fd = os.open(tmp_path / "g", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        problems = fsmeta.apply_metadata(fd, node)
    finally:
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "g").stat().st_mode) == 0o2755
    assert any("setgid bit kept for group" in p and str(node.gid) in p for p in problems), problems


def test_without_root_a_setuid_file_of_another_owner_loses_the_bit_and_says_so(tmp_path, monkeypatch):
    """Not root, the owner cannot be kept: the file is this user's, and setuid would run it as this user --
    another meaning than the snapshot's. It kept mode 4755 silently (setgid was said); cp -p drops the bit."""
    monkeypatch.setattr(fsmeta, "IS_ROOT", False)
    for uid, kept in ((os.geteuid() + 4242, False), (os.geteuid(), True)):
        node = Node(name=b"u", type=FILE, mode=0o4755, uid=uid, gid=os.getegid(), size=0, mtime_ns=0)
        path = tmp_path / f"u{uid}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            problems = fsmeta.apply_metadata(fd, node)
        finally:
            os.close(fd)
        assert stat.S_IMODE(path.stat().st_mode) == (0o4755 if kept else 0o755), (uid, oct(path.stat().st_mode))
        assert (problems == []) if kept else any("setuid bit not kept" in p for p in problems), problems
