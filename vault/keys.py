"""Key slots: the master secrets wrapped by a password-derived key. Pure (no I/O).

A slot (object ``keys/<id>``) is JSON in clear -- KDF name and parameters, salt, and the wrapped secret::

    {"v": 1, "kdf": {...}, "salt": "<b64>", "wrapped": "<b64>", "created": "...", "host": "...", "username": "..."}

The wrapped secret is ``seal(kek, json({"repository": id, "enc_key", "mac_key", "chunker_seed", "config"}))``;
``config`` (optional: older slots lack it) is the repository's canonical ``config`` as text: sealed, so a
``config`` changed in the store is noticed and can be put back.
"""

from __future__ import annotations

import base64
import json
import secrets

from .crypto import KdfParams, MasterKeys, derive_key, unwrap_key, wrap_key
from .errors import IntegrityError


def make_slot(keys: MasterKeys, repo_id: str, password: bytes, kdf: KdfParams, created: str, host: str,
              username: str, config: bytes) -> bytes:
    salt = secrets.token_bytes(32)
    secret = json.dumps({"repository": repo_id, "enc_key": base64.b64encode(keys.enc_key).decode(),
                         "mac_key": base64.b64encode(keys.mac_key).decode(),
                         "chunker_seed": keys.chunker_seed, "config": config.decode()}).encode()
    wrapped = wrap_key(derive_key(password, salt, kdf), secret)
    doc = {"v": 1, "kdf": kdf.to_json(), "salt": base64.b64encode(salt).decode(),
           "wrapped": base64.b64encode(wrapped).decode(), "created": created, "host": host, "username": username}
    return json.dumps(doc, sort_keys=True).encode()


def slot_info(data: bytes) -> dict:
    """The clear part of a slot (for ``vault key list``); raises IntegrityError when malformed."""
    try:
        doc = json.loads(data)
        if doc.get("v") != 1:
            raise ValueError
        KdfParams.from_json(doc["kdf"])
        base64.b64decode(doc["salt"], validate=True)
        base64.b64decode(doc["wrapped"], validate=True)
        return doc
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError):
        raise IntegrityError("key slot is malformed") from None


class ForeignSlot(IntegrityError):
    """The password opens the slot, but its secret names another repository than ``config`` does."""


def open_slot(data: bytes, password: bytes, repo_id: str | None) -> tuple[MasterKeys, bytes | None, str] | None:
    """The master keys, the sealed ``config`` (None in a slot written before it was sealed) and the repository id
    the slot names, or None when the password does not open this slot."""
    doc = slot_info(data)
    kek = derive_key(password, base64.b64decode(doc["salt"]), KdfParams.from_json(doc["kdf"]))
    secret = unwrap_key(kek, base64.b64decode(doc["wrapped"]))
    if secret is None:
        return None
    try:
        s = json.loads(secret)
        keys = MasterKeys(enc_key=base64.b64decode(s["enc_key"]), mac_key=base64.b64decode(s["mac_key"]),
                          chunker_seed=int(s["chunker_seed"]))
        slot_repo = s["repository"]
        config = s.get("config")
        if config is not None:
            config = config.encode()
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise IntegrityError("key slot: malformed secret") from None
    if len(keys.enc_key) != 32 or len(keys.mac_key) != 32:
        raise IntegrityError("key slot: malformed secret")
    if repo_id is not None and slot_repo != repo_id:  # (None: the config is lost; its sealed copy is checked)
        raise ForeignSlot(f"key slot belongs to repository {str(slot_repo)[:64]}")
    return keys, config, str(slot_repo)
