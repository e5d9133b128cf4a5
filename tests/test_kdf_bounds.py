"""Key slots are read before anything is authenticated (anyone who can write keys/ can plant one): the KDF
parameters and salt a slot names must be bounded before a derivation runs, or one planted slot costs every
command on a new machine hours of CPU or gigabytes of memory. derive_key refuses out-of-range parameters
(IntegrityError: the slot is counted damaged) -- cheaply, without deriving."""

from __future__ import annotations

import pytest

from vault.crypto import KdfParams, derive_key
from vault.errors import IntegrityError

SALT = b"s" * 16


@pytest.mark.parametrize("params", [
    KdfParams(name="argon2id", iterations=101, memory_kib=8, lanes=1),     # time cost above 100
    KdfParams(name="argon2id", iterations=0, memory_kib=8, lanes=1),       # time cost below 1
    KdfParams(name="argon2id", iterations=1, memory_kib=8, lanes=65),      # lanes above 64
], ids=["argon2-iterations-101", "argon2-iterations-0", "argon2-lanes-65"])
def test_argon2_parameters_out_of_range_are_refused_before_deriving(params):
    with pytest.raises(IntegrityError, match="out of range"):
        derive_key(b"pw", SALT, params)


@pytest.mark.parametrize("params", [
    KdfParams(name="scrypt", n=2, r=17, p=1),    # block size above 16
    KdfParams(name="scrypt", n=2, r=1, p=17),    # parallelism above 16
], ids=["scrypt-r-17", "scrypt-p-17"])
def test_scrypt_parameters_out_of_range_are_refused_before_deriving(params):
    with pytest.raises(IntegrityError, match="out of range"):
        derive_key(b"pw", SALT, params)


def test_a_salt_shorter_than_16_bytes_is_refused():
    """The format stores >= 16 random bytes; a slot with an 8..15-byte salt (which argon2 itself would take)
    is malformed."""
    with pytest.raises(IntegrityError, match="salt"):
        derive_key(b"pw", b"s" * 8, KdfParams(name="argon2id", iterations=1, memory_kib=8, lanes=1))


def test_parameters_in_range_derive():
    """Control: the bounds themselves are accepted."""
    assert len(derive_key(b"pw", SALT, KdfParams(name="argon2id", iterations=1, memory_kib=8, lanes=1))) == 32
    assert len(derive_key(b"pw", SALT, KdfParams(name="scrypt", n=2, r=16, p=16))) == 32
