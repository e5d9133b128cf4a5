"""AES-GCM must never see one nonce twice under one key (docs/format.md: "a fresh random 96-bit nonce per
object"): a repeated nonce gives away the XOR of two plaintexts and the GHASH key, i.e. forgeries. The
repository's stored blocks and headers are read back raw and every nonce compared."""

from __future__ import annotations

import os

from conftest import PASSWORD

from vault import pack as pack_mod
from vault.backend.local import LocalBackend
from vault.crypto import NONCE_LEN
from vault.pack import pack_name
from vault.repository import Repository


def test_every_block_and_pack_header_has_its_own_nonce(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}").write_bytes(os.urandom(3000 + i))  # many small blocks, several trees
    (src / "big").write_bytes(os.urandom(6 << 20))
    repo("backup", src)
    (src / "f0").write_bytes(b"changed")
    repo("backup", src)
    r = Repository.open(LocalBackend(str(repo.repo)), PASSWORD.encode())
    nonces = []
    for pid, size in r.list_packs():
        data = r.backend.get(pack_name(pid))
        sealed = pack_mod.sealed_header(data)
        nonces.append(bytes(sealed[:NONCE_LEN]))
        for e in pack_mod.parse_pack(data, r.cipher):
            nonces.append(data[e.offset + 1 : e.offset + 1 + NONCE_LEN])  # flag, then the nonce
    assert len(nonces) > 50
    assert len(set(nonces)) == len(nonces), f"{len(nonces) - len(set(nonces))} nonce(s) used twice"
