"""The catalog's sealed form of a tree (entries.py): lossless for every node type, and any damage, another key or
another tree id is rejected before marshal reads a byte."""

import os

import pytest

from vault import entries
from vault.errors import IntegrityError
from vault.model import Node

KEY = entries.cache_key(b"k" * 32)
TID = bytes(range(32))


def _nodes() -> list[Node]:
    return [
        Node(b"a file", "file", 0o644, 1000, 1000, 12345, -5, 1_795_765_934_651_265_029, 42, 65024, 2,
             blocks=[os.urandom(32) for _ in range(3)]),
        Node(b"empty", "file", 0o600, size=0),
        Node(b"\xff\xfe not utf-8", "dir", 0o755, subtree=os.urandom(32)),
        Node(b"no-subtree", "dir"),
        Node(b"link", "symlink", 0o777, target=b"../\xff/target"),
        Node(b"dev", "chardev", 0o660, rdev=(1 << 40) + 3),
        Node(b"fifo", "fifo", 0o644),
    ]


def test_round_trip_is_lossless():
    nodes = _nodes()
    got = [entries.node(e) for e in entries.unseal(KEY, TID, entries.seal(KEY, TID, nodes))]
    assert got == nodes


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "other-id", "other-key", "empty"])
def test_damage_is_rejected(damage):
    sealed = entries.seal(KEY, TID, _nodes())
    key, tid = KEY, TID
    if damage == "flip":
        i = len(sealed) // 2
        sealed = sealed[:i] + bytes([sealed[i] ^ 1]) + sealed[i + 1 :]
    elif damage == "truncate":
        sealed = sealed[:-1]
    elif damage == "extend":
        sealed += b"\0"
    elif damage == "other-id":
        tid = bytes(32)
    elif damage == "other-key":
        key = entries.cache_key(b"j" * 32)
    else:
        sealed = b""
    with pytest.raises(IntegrityError):
        entries.unseal(key, tid, sealed)


@pytest.mark.parametrize("stored", ["text", 12345, None, 1.5, bytearray(b"x" * 64)])
def test_a_row_of_another_type_is_rejected(stored):
    with pytest.raises(IntegrityError):
        entries.unseal(KEY, TID, stored)


def test_a_wide_tree_is_encoded_a_slice_at_a_time_to_the_same_bytes(monkeypatch):
    """Tree.encode builds the JSON of a directory wider than ENCODE_SLICE nodes a slice at a time (memory: the
    dicts of 200,000 nodes at once took ~1 KB each); the bytes are the canonical ones, so tree ids and
    deduplication do not change."""
    from vault import model
    from vault.model import Node, Tree

    nodes = [Node(name=b"f%05d\xff" % i, type="file", size=i, blocks=[bytes([i % 256]) * 32] * (i % 3))
             for i in range(2500)][::-1]
    monkeypatch.setattr(model, "ENCODE_SLICE", 1000)
    sliced = Tree(list(nodes)).encode()
    monkeypatch.setattr(model, "ENCODE_SLICE", 10**9)
    assert Tree(list(nodes)).encode() == sliced
    assert [n.name for n in Tree.decode(sliced).nodes] == sorted(n.name for n in nodes)
