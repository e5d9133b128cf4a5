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
    node = Node(name=b"g", type=FILE, mode=0o2755, uid=1000, gid=1000, size=0, mtime_ns=0)
    path = tmp_path / "g"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        problems = fsmeta.apply_metadata(fd, node)
    finally:
        os.close(fd)
    assert calls[:2] == [("chown", -1, 1000), ("chmod", 0o2755)], calls
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
