"""The catalog is a cache: a damaged cached tree is detected (HMAC) and fetched again, never trusted."""

import sqlite3

from conftest import make_tree


def test_tampered_cached_tree_is_not_trusted(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": b"the real content\n", "d": {"b": b"x" * 5000}})
    repo("backup", src)
    db = next((tmp_path / "cache").rglob("catalog.db"))
    conn = sqlite3.connect(db)
    import zstandard

    rows = conn.execute("SELECT id, data FROM trees").fetchall()
    for tid, data in rows:  # rename every entry in every cached tree: a lying cache
        raw = zstandard.ZstdDecompressor().decompress(data)
        conn.execute("UPDATE trees SET data=? WHERE id=?",
                     (zstandard.ZstdCompressor().compress(raw.replace(b'"a.txt"', b'"z.txt"')), tid))
    conn.commit()
    conn.close()
    out = repo("--json", "ls", "latest").json
    paths = [e["path"] for e in out["entries"]]
    assert any(p.endswith("/a.txt") for p in paths) and not any(p.endswith("/z.txt") for p in paths)
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "a.txt").read_bytes() == b"the real content\n"


def test_catalog_of_an_older_schema_is_rebuilt(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", src)
    db = next((tmp_path / "cache").rglob("catalog.db"))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    assert len(repo("--json", "snapshots").json) == 1
