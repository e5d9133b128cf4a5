"""Names in a tree are single path components (model.valid_name): not empty, not "." or "..", no "/" and no
NUL. test_hostile's crafted names only climb ("../outside/victim") as far as the restore target itself, so a
tree that let "/" through still passed it (the file landed inside the target). Here: every rule on its own
at the parser, and a name that climbs out of the target for real."""

from __future__ import annotations

import json

import pytest
from conftest import make_tree

from test_hostile import Crafter, assert_rejected, fnode, watched

from vault.errors import IntegrityError
from vault.model import Tree


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "../../x", "x\0y"],
                         ids=["empty", "dot", "dotdot", "slash", "absolute", "climb", "nul"])
def test_a_tree_naming_an_entry_so_is_rejected_by_the_parser(name):
    raw = json.dumps({"v": 1, "nodes": [{"name": name, "type": "file", "mode": 0o644}]}).encode()
    with pytest.raises(IntegrityError, match="invalid entry name"):
        Tree.decode(raw)


def test_control_an_ordinary_name_decodes():
    raw = json.dumps({"v": 1, "nodes": [{"name": "a..b", "type": "file", "mode": 0o644}]}).encode()
    assert Tree.decode(raw).nodes[0].name == b"a..b"


@pytest.fixture
def box(tmp_path):
    b = tmp_path / "box"
    make_tree(b / "outside", {"victim": b"do not touch"})
    (b / "target").mkdir()
    return b


def test_a_name_climbing_out_of_the_target_writes_nothing_outside(repo, tmp_path, box):
    c = Crafter(repo.repo)
    blk = c.data(b"pwned\n")
    # restored to target/hostile/<name>: three levels up is box/, the victim box/outside/victim
    sid = c.snapshot(c.tree([fnode("../../outside/victim", blk, 6), fnode("../../outside/new", blk, 6)]))
    before = watched(tmp_path, box)
    res = repo("restore", sid, "--target", box / "target", ok=False)
    assert_rejected(res)
    assert (box / "outside" / "victim").read_bytes() == b"do not touch"
    assert not (box / "outside" / "new").exists()
    assert watched(tmp_path, box) == before
