"""The catalog is a cache: a damaged cached tree is detected (keyed MAC) and fetched again, never trusted."""

import sqlite3

from conftest import make_tree


def _tamper_cached_trees(tmp_path, change) -> int:
    db = next((tmp_path / "cache").rglob("catalog.db"))
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, entries FROM trees").fetchall()
    for tid, sealed in rows:
        conn.execute("UPDATE trees SET entries=? WHERE id=?", (change(tid, sealed, rows), tid))
    conn.commit()
    conn.close()
    return len(rows)


def _check_not_trusted(repo, tmp_path, src):
    out = repo("--json", "ls", "latest").json
    paths = [e["path"] for e in out["entries"]]
    assert any(p.endswith("/a.txt") for p in paths) and not any(p.endswith("/z.txt") for p in paths)
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "a.txt").read_bytes() == b"the real content\n"


def test_tampered_cached_tree_is_not_trusted(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": b"the real content\n", "d": {"b": b"x" * 5000}})
    repo("backup", src)
    # rename every entry in every cached tree (still valid marshal data): a lying cache
    assert _tamper_cached_trees(tmp_path, lambda tid, sealed, rows: sealed.replace(b"a.txt", b"z.txt")) >= 3
    _check_not_trusted(repo, tmp_path, src)


def test_cached_tree_moved_to_another_id_is_not_trusted(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": b"the real content\n", "d": {"b": b"x" * 5000}})
    repo("backup", src)
    # give every row the next row's (validly sealed) entries: the seal binds them to their tree id
    _tamper_cached_trees(tmp_path, lambda tid, sealed, rows: rows[(rows.index((tid, sealed)) + 1) % len(rows)][1])
    _check_not_trusted(repo, tmp_path, src)
    # and a backup after it compares against the real parent: nothing is re-read, nothing is lost
    out = repo("--json", "backup", src).json
    assert out["files_unmodified"] == 2 and out["files_new"] == 0


def test_catalog_of_an_older_schema_is_rebuilt(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", src)
    db = next((tmp_path / "cache").rglob("catalog.db"))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    assert len(repo("--json", "snapshots").json) == 1
