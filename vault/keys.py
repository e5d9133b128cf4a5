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

from .crypto import KDF_NAMES, KdfParams, MasterKeys, derive_key, unwrap_key, wrap_key
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
    """The clear part of a slot (for ``vault key list``); raises IntegrityError when malformed. A well-formed
    slot whose KDF this vault does not know (a newer vault's) is not malformed: ``doc["unsupported"]`` says so
    -- it opens nothing here, but is never reported as damage nor removed (format.md §15)."""
    try:
        doc = json.loads(data)
        if doc.get("v") != 1:
            raise ValueError
        doc.pop("unsupported", None)  # (set below only: never taken from the slot itself)
        base64.b64decode(doc["salt"], validate=True)
        base64.b64decode(doc["wrapped"], validate=True)
        kdf = doc["kdf"]
        if type(kdf) is dict and type(kdf.get("name")) is str and kdf["name"] not in KDF_NAMES:
            doc["unsupported"] = f"its KDF {kdf['name'][:40]!r} is unknown to this vault (a newer vault's slot?)"
            return doc
        KdfParams.from_json(kdf)
        return doc
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError):
        raise IntegrityError("key slot is malformed") from None


class ForeignSlot(IntegrityError):
    """The password opens the slot, but its secret names another repository than ``config`` does."""


def open_slot(data: bytes, password: bytes, repo_id: str | None) -> tuple[MasterKeys, bytes | None, str] | None:
    """The master keys, the sealed ``config`` (None in a slot written before it was sealed) and the repository id
    the slot names, or None when the password does not open this slot."""
    doc = slot_info(data)
    if "unsupported" in doc:
        return None  # (skipped: it opens nothing this vault can use)
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
