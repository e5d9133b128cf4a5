"""A key slot seals a copy of the repository's config, used when the stored config is lost or changed. A slot
whose sealed config names ANOTHER repository than the one its own secret names is unusable (damaged or
crafted by a key holder): it must never open the repository, and above all never have its foreign id taken
as the repository's (with the stored config lost, 'vault repair' would write that id back as config)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import PASSWORD

from vault.backend.local import LocalBackend
from vault.crypto import KdfParams
from vault.errors import VaultError
from vault.keys import make_slot
from vault.repository import Repository

OTHER_ID = "a" * 64


def _plant_slot(repo) -> Repository:
    """A slot for password b"other": this repository's keys and id, but a sealed config naming OTHER_ID."""
    r = Repository.open(LocalBackend(str(repo.repo)), PASSWORD.encode())
    kdf = KdfParams.from_json(json.loads(next((repo.repo / "keys").iterdir()).read_text())["kdf"])
    other = dataclasses.replace(r.config, id=OTHER_ID)
    slot = make_slot(r.keys, r.id, b"other", kdf, "2026-01-01T00:00:00Z", "h", "u", other.encode())
    (repo.repo / "keys" / ("e" * 64)).write_bytes(slot)
    return r


@pytest.mark.parametrize("config", ["present", "lost"])
def test_a_slot_sealing_another_repositorys_config_does_not_open(repo, config):
    r = _plant_slot(repo)
    if config == "lost":
        (repo.repo / "config").unlink()
    try:
        opened = Repository.open(LocalBackend(str(repo.repo)), b"other")
    except VaultError as exc:
        assert "wrong password" in str(exc) or "damaged" in str(exc) or "another repository" in str(exc), exc
        return
    pytest.fail(f"opened with the slot's foreign sealed config: id {opened.id} (this repository's: {r.id})")
