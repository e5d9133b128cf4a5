"""A file whose blocks meet both a read that failed here (the store refused, exit 1) and a block that fails
its check (damage, exit 20) is reported as DAMAGED, whichever came first: "damage outranks a local error"
(restorer._write). Reported as a mere read error, the user would retry instead of running verify/repair, and
the exit code would hide real damage (20)."""

from __future__ import annotations

import os

import pytest
from conftest import with_jobs
from test_damage import big_file_over_packs, flip_in_file, pack_path

from vault.backend.local import LocalBackend
from vault.errors import PermanentError


@pytest.mark.parametrize("refused_first", [True, False])
def test_damage_outranks_a_read_error_in_the_same_file(cli, tmp_path, monkeypatch, refused_first):
    src, lay, path, packs = big_file_over_packs(cli, tmp_path)
    refused, damaged = (packs[0], packs[-1]) if refused_first else (packs[-1], packs[0])
    flip_in_file(cli, lay, path, damaged)
    refused_name = os.path.relpath(pack_path(cli.repo, refused), cli.repo)
    real_get, real_get_into = LocalBackend.get, LocalBackend.get_into

    def get(self, name, *a, **kw):
        if name == refused_name:
            raise PermanentError(f"reading {name}: access denied (injected)")
        return real_get(self, name, *a, **kw)

    def get_into(self, name, *a, **kw):
        if name == refused_name:
            raise PermanentError(f"reading {name}: access denied (injected)")
        return real_get_into(self, name, *a, **kw)

    monkeypatch.setattr(LocalBackend, "get", get)
    monkeypatch.setattr(LocalBackend, "get_into", get_into)
    for jobs in ("1", "2"):
        res = with_jobs(cli, jobs, "restore", "latest", "--target", tmp_path / f"t{jobs}", ok=False)
        assert res.code == 20, (jobs, res.code, res.err)
        assert "damaged" in res.err and "big.bin" in res.err, res.err
