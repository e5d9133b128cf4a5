"""Nothing about the backed-up data shows in the repository: names, contents, symlink targets, tags and host
are all encrypted; many small files are packed into few objects."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from conftest import FAST_INIT, Symlink, make_tree


def repo_files(root: Path) -> list[Path]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        out += [Path(dirpath) / f for f in filenames]
    return out


def forms(marker: str) -> list[bytes]:
    """The marker as it could leak: raw, UTF-16, hex, base64 (at each alignment), reversed-case hex."""
    raw = marker.encode()
    out = [raw, marker.encode("utf-16-le"), marker.encode("utf-16-be"), raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):  # base64 of the marker embedded at any offset contains one of these
        enc = base64.b64encode(b"\0" * shift + raw)[4:-4]
        out.append(enc)
    return out


def test_marker_never_appears_in_repository(repo, tmp_path):
    marker = "mk" + secrets.token_hex(12)
    content = (f"secret line with {marker} inside\n" * 5000).encode()
    src = make_tree(tmp_path / "src", {
        f"file-{marker}.txt": b"innocent",
        f"dir-{marker}": {"plain": content},
        "link": Symlink(f"/target/{marker}/x"),
        "content.txt": content,
        "small.txt": marker.encode(),
    })
    # the source path itself holds the marker too (snapshot paths are metadata)
    repo("backup", src, "--tag", f"tag-{marker}", "--host", f"host-{marker}")
    snaps = repo("--json", "snapshots").json
    assert snaps[0]["tags"] == [f"tag-{marker}"] and snaps[0]["host"] == f"host-{marker}"
    # a second backup with a parent, and a listing through the catalog, must not leak either
    (src / "content.txt").write_bytes(content + marker.encode())
    repo("backup", src, "--tag", f"tag-{marker}", "--host", f"host-{marker}")
    files = repo_files(repo.repo)
    assert any("data" in f.parts for f in files)
    leaks = []
    for f in files:
        data = f.read_bytes()
        for form in forms(marker):
            if form in data:
                leaks.append((str(f.relative_to(repo.repo)), form))
        # object names must not carry it either
        if marker in str(f):
            leaks.append((str(f), "in the name"))
    assert not leaks, f"marker found in the repository: {leaks}"


def test_marker_in_source_path_not_leaked(repo, tmp_path):
    marker = "pm" + secrets.token_hex(12)
    src = make_tree(tmp_path / f"src-{marker}", {"a": b"x"})
    repo("backup", src)
    for f in repo_files(repo.repo):
        data = f.read_bytes()
        assert marker.encode() not in data and marker.encode().hex().encode() not in data, f


def test_content_is_not_stored_compressed_in_clear(repo, tmp_path):
    """Compressible content must be compressed *and* encrypted: the stored bytes look random."""
    import zlib

    src = make_tree(tmp_path / "src", {"zeros": bytes(4 * 1024 * 1024), "text": b"abcdefgh" * 200_000})
    repo("backup", src)
    for f in repo_files(repo.repo / "data"):
        data = f.read_bytes()
        # encrypted bytes do not compress
        assert len(zlib.compress(data, 6)) > len(data) * 0.95, f


def test_many_small_files_few_objects(repo, tmp_path):
    src = tmp_path / "src"
    for d in range(20):
        sub = src / f"d{d:02d}"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub / f"f{i:03d}.txt").write_bytes(f"{d}-{i}-{secrets.token_hex(8)}\n".encode())
    out = repo("--json", "backup", src).json
    assert out["files_new"] == 2000
    data_files = repo_files(repo.repo / "data")
    assert 0 < len(data_files) < 20, f"{len(data_files)} objects under data/ for 2000 tiny files"
    assert len(repo_files(repo.repo)) < 40


def _modes(root: Path) -> dict[str, int]:
    import stat

    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files + ([] if dirpath != str(root) else ["."]):
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


def test_a_new_repository_is_private_whatever_the_umask(cli, tmp_path):
    """Under umask 000 every directory of the repository was 0777 and every object 0644: any local user could
    delete packs, or read the key slots to guess the password offline. init makes the root 0700, and what is
    written follows it."""
    old = os.umask(0)
    try:
        cli("init", *FAST_INIT)
        cli("backup", make_tree(tmp_path / "src", {"a": b"a", "d": {"b": b"b"}}))
    finally:
        os.umask(old)
    modes = _modes(cli.repo)
    assert modes["."] == 0o700 and len(modes) > 8
    assert all(m & 0o077 == 0 for m in modes.values()), {p: oct(m) for p, m in modes.items() if m & 0o077}


def test_a_group_shared_repository_stays_shared_whatever_the_umask(cli, tmp_path):
    """A repository root made 2770 beforehand (a backup group) is followed: directories 2770, objects 0660, under
    a umask of 022 that would have taken the group's write bit (another member could not add a pack)."""
    cli.repo.mkdir()
    os.chmod(cli.repo, 0o2770)
    old = os.umask(0o022)
    try:
        cli("init", *FAST_INIT)
        cli("backup", make_tree(tmp_path / "src", {"a": b"a"}))
    finally:
        os.umask(old)
    modes = _modes(cli.repo)
    dirs = {p for p in modes if (cli.repo / p).is_dir()}
    assert {modes[p] for p in dirs} == {0o2770} and {modes[p] for p in modes if p not in dirs} == {0o660}


def test_the_umask_still_applies_in_a_repository_made_by_an_earlier_vault(cli, tmp_path):
    """A 0755 root (an earlier vault's, or a plain mkdir) gave its read bits for others to every new object, even
    under umask 077 (which the earlier vault honoured); and a root writable by others was taken without a word."""
    cli.repo.mkdir(mode=0o755)
    os.chmod(cli.repo, 0o755)
    cli("init", *FAST_INIT)
    old = os.umask(0o077)
    try:
        cli("backup", make_tree(tmp_path / "src", {"a": b"a"}))
    finally:
        os.umask(old)
    new = [m for p, m in _modes(cli.repo).items() if p.startswith(("data", "index", "snapshots"))]
    assert new and all(m & 0o077 == 0 for m in new), [oct(m) for m in new]
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o777)
    res = cli("--repo", wide, "init", *FAST_INIT)
    assert "writable by every local user (mode 0777)" in res.err


def test_init_onto_a_file_still_names_the_file(cli, tmp_path):
    """Making the root 0700 at init swallowed "File exists" for a file in the repository's place: init went on
    and failed writing its key slot ("Not a directory")."""
    f = tmp_path / "afile"
    f.write_bytes(b"x")
    res = cli("--repo", f, "init", *FAST_INIT, ok=1)
    assert "error creating" in res.err and "File exists" in res.err and f.read_bytes() == b"x", res.err
