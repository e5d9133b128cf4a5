"""Keys, authenticated encryption and keyed block ids. Pure: bytes in, bytes out.

* Block id: HMAC-SHA256(mac_key, plaintext) -- keyed, so ids do not reveal file contents.
* Encryption: AES-256-GCM, a fresh random 96-bit nonce per object; stored as nonce || ciphertext || tag.
  The associated data binds a ciphertext to what it claims to be (a block id, "snapshot", ...).
* Key derivation: Argon2id (default t=4, 32 MiB, p=4; stronger than OWASP's m=19 MiB t=2) or scrypt; parameters are stored in each key slot.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import IntegrityError, UsageError

NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = NONCE_LEN + TAG_LEN


@dataclass(frozen=True)
class KdfParams:
    """How a password becomes a key-encryption key. Stored (with the salt) in every key slot."""

    name: str = "argon2id"
    iterations: int = 4  # argon2id: time cost; scrypt: unused
    memory_kib: int = 32768  # argon2id: memory cost in KiB (32 MiB: keeps peak RSS of every command low)
    lanes: int = 4
    n: int = 1 << 17  # scrypt
    r: int = 8
    p: int = 1

    def to_json(self) -> dict:
        if self.name == "argon2id":
            return {"name": self.name, "iterations": self.iterations, "memory_kib": self.memory_kib,
                    "lanes": self.lanes}
        return {"name": self.name, "n": self.n, "r": self.r, "p": self.p}

    @classmethod
    def from_json(cls, d: dict) -> "KdfParams":
        name = d.get("name")
        try:
            if name == "argon2id":
                return cls(name=name, iterations=int(d["iterations"]), memory_kib=int(d["memory_kib"]),
                           lanes=int(d["lanes"]))
            if name == "scrypt":
                return cls(name=name, n=int(d["n"]), r=int(d["r"]), p=int(d["p"]))
        except (KeyError, TypeError, ValueError, OverflowError):  # (OverflowError: int(Infinity))
            pass
        raise IntegrityError(f"key slot has unsupported or malformed KDF parameters: {d!r}"[:200])


KDF_NAMES = ("argon2id", "scrypt")  # the KDFs ``KdfParams.from_json`` and ``derive_key`` know


#: Fast parameters for tests and examples only; never the default.
FAST_KDF = KdfParams(name="argon2id", iterations=1, memory_kib=64, lanes=1)


def derive_key(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    """Derive the 32-byte key-encryption key from a password."""
    if len(salt) < 16:
        raise IntegrityError("key slot salt is too short")
    if params.name == "argon2id":
        if not (1 <= params.iterations <= 100 and 8 <= params.memory_kib <= 1024 * 1024
                and 1 <= params.lanes <= 64):
            raise IntegrityError("key slot KDF parameters out of range")
        kdf = Argon2id(salt=salt, length=32, iterations=params.iterations, lanes=params.lanes,
                       memory_cost=max(params.memory_kib, 8 * params.lanes))
        return kdf.derive(password)
    if params.name == "scrypt":
        if not (2 <= params.n <= 1 << 20 and params.n & (params.n - 1) == 0 and 1 <= params.r <= 16
                and 1 <= params.p <= 16 and 128 * params.r * params.n <= 1 << 30 and len(salt) >= 16):
            raise IntegrityError("key slot KDF parameters out of range")
        return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(password)
    raise UsageError(f"unknown KDF {params.name!r}")


@dataclass(frozen=True)
class MasterKeys:
    """The repository's secrets. Wrapped in key slots, never stored in clear."""

    enc_key: bytes  # AES-256-GCM key for every block, tree, header, index segment and snapshot
    mac_key: bytes  # HMAC-SHA256 key for block ids
    chunker_seed: int  # 64-bit secret XORed into the chunker's gear table

    @classmethod
    def generate(cls) -> "MasterKeys":
        return cls(enc_key=secrets.token_bytes(32), mac_key=secrets.token_bytes(32),
                   chunker_seed=secrets.randbits(63) | 1)


class Cipher:
    """AES-256-GCM with the repository key; thread-safe (AESGCM objects are immutable)."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes | memoryview, aad: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def encrypt_into(self, nonce: bytes | memoryview, plaintext: bytes | memoryview, aad: bytes,
                     out: memoryview) -> None:
        """Encrypt into ``out`` (len(plaintext) + 16 bytes): ciphertext followed by the tag."""
        self._aead.encrypt_into(bytes(nonce), plaintext, aad, out)

    def open(self, blob: bytes | memoryview, aad: bytes = b"", what: str = "object") -> bytes:
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"{what}: too short to be encrypted data ({len(blob)} bytes)")
        mv = memoryview(blob)
        try:
            return self._aead.decrypt(mv[:NONCE_LEN], mv[NONCE_LEN:], aad)
        except InvalidTag:
            raise IntegrityError(f"{what}: authentication failed (damaged or not ours)") from None


    def open_into(self, blob: bytes | memoryview, aad: bytes, out: bytearray, what: str = "object") -> memoryview:
        """Like ``open``, decrypting into ``out`` (grown if needed, reused by the caller): no fresh pages to
        fault in while the AEAD holds the GIL. Returns a view of the plaintext, valid until ``out`` is reused."""
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"{what}: too short to be encrypted data ({len(blob)} bytes)")
        mv = memoryview(blob)
        n = len(mv) - OVERHEAD
        if len(out) < n:
            out.extend(bytes(n - len(out)))
        view = memoryview(out)[:n]
        try:
            self._aead.decrypt_into(mv[:NONCE_LEN], mv[NONCE_LEN:], aad, view)
        except InvalidTag:
            raise IntegrityError(f"{what}: authentication failed (damaged or not ours)") from None
        return view


def wrap_key(kek: bytes, secret: bytes) -> bytes:
    return Cipher(kek).seal(secret, b"vault key slot")


def unwrap_key(kek: bytes, wrapped: bytes) -> bytes | None:
    """Return the wrapped secret, or None when the key-encryption key is wrong."""
    try:
        return Cipher(kek).open(wrapped, b"vault key slot", "key slot")
    except IntegrityError:
        return None


def block_id(mac_key: bytes, data: bytes | memoryview) -> bytes:
    """The content address of a chunk or tree: HMAC-SHA256 of its plaintext."""
    return hmac.digest(mac_key, data, "sha256")
