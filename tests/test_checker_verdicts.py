"""verify --read-data tells damage (exit 20: evidence against the repository) from a pack it could not read
now (exit 1: the store refused, the network stayed down). A read error that is not evidence must never be
reported as damage: 'vault repair' acts on damage (it drops what it cannot read), and the user would be sent
to repair a repository that is intact."""

from __future__ import annotations

import random

import pytest
from conftest import FAST_INIT, make_tree, with_jobs

from vault.backend.local import LocalBackend
from vault.errors import PermanentError, TransientError

MiB = 1024 * 1024


@pytest.fixture
def packed(cli, tmp_path):
    cli("init", *FAST_INIT, "--pack-size", "1")
    rnd = random.Random(11)
    src = make_tree(tmp_path / "src", {"a.bin": rnd.randbytes(3 * MiB), "b.txt": b"small\n"})
    cli("backup", src)
    cli("verify")  # (the catalog is synced before reads start failing)
    return src


@pytest.mark.parametrize("exc", [PermanentError, TransientError])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_pack_the_store_refuses_to_return_is_an_error_not_damage(cli, packed, monkeypatch, exc, jobs):
    real_get, real_get_into = LocalBackend.get, LocalBackend.get_into

    def refuse(name):
        if name.startswith("data/"):
            raise exc(f"reading {name}: access denied (injected)")

    def get(self, name, *a, **kw):
        refuse(name)
        return real_get(self, name, *a, **kw)

    def get_into(self, name, *a, **kw):
        refuse(name)
        return real_get_into(self, name, *a, **kw)

    monkeypatch.setattr(LocalBackend, "get", get)
    monkeypatch.setattr(LocalBackend, "get_into", get_into)
    res = with_jobs(cli, jobs, "verify", "--read-data", ok=False)
    assert res.code == 1, (res.code, res.out, res.err)
    assert "access denied" in res.err, res.err
    assert "damaged" not in (res.out + res.err).lower() and "internal error" not in res.err, (res.out, res.err)
    monkeypatch.setattr(LocalBackend, "get", real_get)
    monkeypatch.setattr(LocalBackend, "get_into", real_get_into)
    assert cli("--json", "verify", "--read-data").json["ok"] is True
