"""A store or network that cuts every read of an object at the same point, while the store lists it whole, is
a read that failed (TruncatedResponse: exit 1, try again), never damage: 'damaged' sends the user to
'vault repair', which rewrites or drops what it believes damaged. Damage is what reads back the same each
time AND is as long as the object the store holds."""

from __future__ import annotations

import os

import pytest

from vault.backend.local import LocalBackend
from vault.errors import IntegrityError, TruncatedResponse
from vault.repository import _read_config


def _cut(monkeypatch, prefix: str, keep: int) -> None:
    real = LocalBackend.get

    def get(self, name, offset=0, length=None):
        data = real(self, name, offset, length)
        return data[:keep] if name.startswith(prefix) else data

    monkeypatch.setattr(LocalBackend, "get", get)


def test_a_config_read_cut_short_every_time_is_a_failed_read_not_damage(repo, monkeypatch):
    backend = LocalBackend(repo.repo)
    _cut(monkeypatch, "config", 20)
    with pytest.raises(TruncatedResponse, match="does not return it whole"):
        _read_config(backend)
    res = repo("snapshots", ok=False)
    assert "damaged" not in res.err and "repair" not in res.err, (res.code, res.err)


def test_a_config_damaged_in_the_store_is_still_damage(repo):
    cfg = repo.repo / "config"
    data = bytearray(cfg.read_bytes())
    data[len(data) // 2] ^= 0x20
    os.chmod(cfg, 0o644)
    cfg.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        _read_config(LocalBackend(repo.repo))
    assert not isinstance(info.value, TruncatedResponse)
