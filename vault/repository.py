"""The repository: config, key slots, and verified reads and atomic writes of every object kind.

Objects (docs/format.md is the binding spec)::

    config              JSON in clear: format version, repository id, chunker/compression/pack parameters
    keys/<id>           key slots (vault.keys)
    data/<xx>/<id>      packs (vault.pack); id = SHA-256 of the pack's bytes
    index/<id>          index segments (vault.index); id = SHA-256 of the stored bytes
    snapshots/<id>      sealed snapshot manifests; id = SHA-256 of the stored bytes
    locks/<id>          locks (vault.locks)

Every read is verified: the object's name against the SHA-256 of its bytes, then authentication,
then (for blocks) the HMAC id of the plaintext.
"""

from __future__ import annotations

import hashlib
import re
import itertools
import json
import secrets
import socket
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar
from dataclasses import dataclass
from datetime import datetime, timezone

from . import index as index_mod
from . import pack as pack_mod
from .pack import pack_name
from .backend.base import Backend, confirmed_size
from .chunker import Chunker, ChunkerParams
from .compress import compress, decompress, decompress_into
from .crypto import Cipher, KdfParams, MasterKeys, block_id
from .errors import (IntegrityError, LockLost, ObjectExists, ObjectNotFound, PermanentError, RepositoryExists,
                     RepositoryNotFound, TruncatedResponse, VaultError, VaultWarning, WrongPassword, is_damage)
from .fsmeta import username
from .keys import ForeignSlot, make_slot, open_slot, slot_info
from .model import Snapshot, Tree, format_time

T = TypeVar("T")

FORMAT_VERSION = 1
SNAPSHOT_AAD = b"vault snapshot"
MAX_SLOT = 64 << 10  # a key slot is ~500 bytes
MAX_CONFIG = 1 << 20  # a config is a few hundred bytes of JSON
MAX_SEGMENT_STORED = index_mod.MAX_SEGMENT_PLAIN + (1 << 20)  # (format.md: plaintext <= 512 MiB; + zstd, AEAD)
MAX_LOG = 64 << 20  # a forget record: a line per snapshot decided
MAX_MANIFEST = 64 << 20  # a snapshot manifest is a few hundred bytes (paths, tags, summary); 100,000 PATHs ~10 MB
LOG_AAD = b"vault log"


@dataclass(frozen=True)
class RepoConfig:
    id: str
    chunker: ChunkerParams
    compression_level: int = 3
    pack_size: int = 16 * 1024 * 1024
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        doc = {"version": self.version, "id": self.id, "chunker": self.chunker.to_json(),
               "compression": {"algorithm": "zstd", "level": self.compression_level},
               "pack_size": self.pack_size, "block_id": "hmac-sha256", "cipher": "aes-256-gcm"}
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes) -> "RepoConfig":
        try:
            d = json.loads(data)
            if type(d["version"]) is not int:  # (true, 1.0, NaN: damage, not a newer format)
                raise ValueError
            if d["version"] != FORMAT_VERSION:
                raise VaultError(f"repository format version {d['version']} is not supported by this vault "
                                 f"(it reads version {FORMAT_VERSION}); upgrade vault")
            if (d.get("cipher", "aes-256-gcm"), d.get("block_id", "hmac-sha256"),
                    d["compression"].get("algorithm"), d["chunker"].get("algorithm")) != (
                    "aes-256-gcm", "hmac-sha256", "zstd", "fastcdc2020"):
                raise VaultError("repository uses a cipher, hash, compression or chunker this vault does not know")
            cfg = cls(id=str(d["id"]), chunker=ChunkerParams.from_json(d["chunker"]),
                      compression_level=int(d["compression"]["level"]), pack_size=int(d["pack_size"]))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError):
            raise IntegrityError("repository config is damaged or not a vault repository") from None
        if type(d["compression"]["level"]) is not int or type(d["pack_size"]) is not int:  # (version: above)
            raise IntegrityError("repository config holds impossible values")  # (true, 1.0, 1.5 were taken)
        if not (len(cfg.id) == 64 and all(c in "0123456789abcdef" for c in cfg.id) and 1024 <= cfg.pack_size <= 1 << 30 and -7 <= cfg.compression_level <= 22):
            raise IntegrityError("repository config holds impossible values")
        return cfg


def _sealed_config(data: bytes | None, repo_id: str) -> RepoConfig | None:
    """The config sealed in a key slot (None: the slot predates it); IntegrityError when it is unusable or names
    another repository than ``repo_id``, the one the slot's secret names."""
    if data is None:
        return None
    try:
        sealed = RepoConfig.decode(data)
    except VaultError as exc:  # (IntegrityError, or a format version this vault does not read)
        raise IntegrityError(f"key slot: sealed config: {exc}") from None
    if sealed.id != repo_id:
        raise IntegrityError("key slot: its sealed config names another repository")
    return sealed


def _stored_config(backend: Backend) -> tuple[RepoConfig | None, str]:
    """The stored config, or (None, what is wrong with it) when it is missing or damaged but key slots exist
    (they may hold a sealed copy); RepositoryNotFound when there is neither. A config of a format version this
    vault does not read stays an error."""
    try:
        return _read_config(backend), ""
    except ObjectNotFound:  # no repository -- or one whose config was lost: the key slots may hold a copy
        problem, err = "config object is missing", None
    except IntegrityError as exc:
        problem, err = f"config object is damaged ({exc})", exc
    try:  # (key slots only: a "keys/" folder marker or a note there is no repository's)
        slots = next(iter(_slots(backend)), None)
    except (ObjectNotFound, PermanentError):  # (no such bucket, no permission to list)
        slots = None
    if slots is None:
        if err is not None:
            raise err
        raise RepositoryNotFound(f"no repository at {backend.location} (run 'vault init' to create one)")
    return None, problem


def _read_config(backend: Backend) -> RepoConfig:
    """The config object (``_read_checked``: a body cut short is TruncatedResponse, never "damaged" -- its sealed
    copy would be used, and 'repair' write it back)."""
    return _read_checked(backend, "config", RepoConfig.decode, MAX_CONFIG)


def _read_checked(backend: Backend, name: str, check: Callable[[bytes], T], limit: int | None = None) -> T:
    """``check(the object's bytes)`` -- its value, or IntegrityError -- with the object read again when it does
    not check: damage is what reads back the same each time and is as long as the object the store holds; a
    store or network that sends other bytes each time, or cuts every read at the same point (even with a
    Content-Length that agrees), is TruncatedResponse, never damage. With ``limit``, at most that many bytes are
    read (a bigger object -- junk named by its own hash -- is damage at once, never held whole)."""
    seen = set()
    for _ in range(3):
        data = backend.get(name) if limit is None else backend.get(name, 0, limit + 1)
        if limit is not None and len(data) > limit:
            raise IntegrityError(f"{name}: over {limit} bytes, more than such an object holds (damaged)")
        try:
            return check(data)
        except IntegrityError as exc:
            problem = exc
            seen.add(hashlib.sha256(data).digest())
    if len(seen) > 1:
        raise TruncatedResponse(f"{name}: read 3 times, other bytes each time, none that checks: the store or the "
                                "network does not return it whole")
    size = None
    try:
        size = confirmed_size(backend, name, len(data))
    except ObjectNotFound:
        pass
    if size is not None and size != len(data):
        raise TruncatedResponse(f"{name}: {len(data):,} bytes read of the {size:,} the store holds, each time: the "
                                "store or the network does not return it whole")
    raise problem


def _under_lock(check_lock: Callable[[], None], write: Callable[[], str], take_back: Callable[[str], None]) -> str:
    """``write()`` an object under a lock asked for before and again once the object landed; when the lock was
    lost meanwhile, ``take_back(its id)`` and LockLost."""
    check_lock()
    sid = write()
    try:
        check_lock()
    except LockLost:
        take_back(sid)
        raise
    except VaultError:
        pass  # (cannot ask now: the lock was ours just before the object was sent)
    return sid


def _slot_order(backend: Backend, listed: dict[str, int], first: str | None) -> Iterator[str]:
    """The key slots in the order to try them: ``first`` (the one that opened the repository last time), then
    the others cheapest KDF first. Each slot tried costs one key derivation; fake slots with costly parameters
    (anyone who can write to the store can add them) then cost no more than the real one each, on a new
    machine too. Slots are read here only for their parameters (and again when tried)."""
    if first in listed:
        yield first
    rest = [(name, size) for name, size in listed.items() if name != first]
    if len(rest) == 1:  # (nothing to order: not read twice)
        yield rest[0][0]
        return
    costs = []
    for name, size in rest:
        cost = 0  # (unreadable, too large or malformed: tried first, it fails at once)
        if size <= MAX_SLOT:
            try:
                kdf = KdfParams.from_json(slot_info(backend.get(name, 0, size))["kdf"])
                cost = _kdf_cost(kdf)
            except (IntegrityError, ObjectNotFound, ValueError, TypeError, OverflowError):
                pass
        costs.append((cost, name))
    yield from (name for _, name in sorted(costs))


def _kdf_cost(kdf: KdfParams) -> int:
    """A derivation's cost in comparable units (measured: Argon2id t=4, 32 MiB, 4 lanes takes 0.12 s here;
    t=100, 8 KiB, 64 lanes 1.7 s -- each lane costs like ~300 KiB more; scrypt N=2^16, r=15 0.34 s)."""
    if kdf.name == "argon2id":
        return kdf.iterations * (max(kdf.memory_kib, 8 * kdf.lanes) + 300 * kdf.lanes)
    return kdf.n * kdf.r * kdf.p * 2 // 5


def _damaged_note(damaged: int) -> str:
    return f" ({damaged} key slot(s) are damaged; see 'vault key list')" if damaged else ""


def _config_changes(stored: RepoConfig, sealed: RepoConfig) -> str:
    """Which fields differ, e.g. ``pack_size 2048 (sealed: 16777216)``."""
    def flat(doc: dict, pre: str = "") -> dict:
        out = {}
        for k, v in doc.items():
            out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) else {pre + k: v})
        return out
    a, b = flat(json.loads(stored.encode())), flat(json.loads(sealed.encode()))
    return "; ".join(f"{k} {a.get(k)} (sealed: {b.get(k)})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


class Scratch:
    """Reusable buffers for ``Repository.open_block_into``: the decrypted block and its decompressed bytes.
    One per thread; a result viewing them is valid until the next block."""

    __slots__ = ("sealed", "plain")

    def __init__(self) -> None:
        self.sealed, self.plain = bytearray(), bytearray()


def _slots(backend) -> Iterator[tuple[str, int]]:
    """(name, size) of the key slots: ``keys/`` names of 64 hex digits. Anything else there (``<slot>.bak``, a
    note) is not an object of the format: never opened, reported or removed."""
    return ((name, size) for name, size in backend.list("keys/") if _hex_name(name, "keys/") is not None)


def _slot_sound(name: str, data: bytes) -> bool:
    """Whether key slot ``name``'s bytes match its name (the SHA-256 of the slot)."""
    return hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[-1]


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _hex_name(name: str, prefix: str) -> bytes | None:
    """The id an object name of the format stands for: exactly ``<prefix><64 lowercase hex>`` (for packs,
    ``data/<first 2>/<64 hex>``), else None -- never read, reported or removed. (bytes.fromhex took "ab ab ...",
    upper case, and any directory: a planted ``data/zz/<id of an intact pack>`` was listed as that pack, with its
    own size, and repair unindexed the intact one; one planted name made every command an internal error.)"""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    if prefix == "data/":
        if len(rest) != 67 or rest[2] != "/" or rest[:2] != rest[3:5]:
            return None
        rest = rest[3:]
    if not _HEX64.fullmatch(rest):
        return None
    return bytes.fromhex(rest)


class Repository:
    """An open, unlocked repository. Thread-safe for block encode/decode and object I/O."""

    def __init__(self, backend: Backend, config: RepoConfig, keys: MasterKeys, key_name: str):
        self.backend = backend
        self.config = config
        self.config_problem: str | None = None  # the stored config differs from the sealed one (``open``)
        self.keys = keys
        self.key_name = key_name
        self.cipher = Cipher(keys.enc_key)
        self.chunker = Chunker(config.chunker, keys.chunker_seed)
        self._listed: dict[str, int] = {}  # sizes of index segments and logs as last listed (read no further)

    @property
    def id(self) -> str:
        return self.config.id

    # --- creating and opening -----------------------------------------------------------------------
    @classmethod
    def create(cls, backend: Backend, password: "bytes | Callable[[], bytes]", *, kdf: KdfParams = KdfParams(),
               chunker: ChunkerParams = ChunkerParams(), compression_level: int = 1,
               pack_size: int = 16 * 1024 * 1024, keys: MasterKeys | None = None) -> "Repository":
        if backend.exists_store() or backend.exists("config"):
            raise RepositoryExists(f"a repository already exists at {backend.location}; refusing to overwrite it")
        if callable(password):  # asked for only now: an existing repository is refused before any prompt
            password = password()
        backend.create_store()
        held = [name for name, _ in itertools.islice(backend.list(""), 1000)]
        if any(name.startswith("keys/") and _hex_name(name, "keys/") is not None for name in held):
            raise RepositoryExists(f"{backend.location} holds key slots but no config: an init cut short, or a "
                                   "repository that lost its config. 'vault snapshots' opens it with the config "
                                   "sealed in its key slot, and 'vault repair' writes config back; or empty the "
                                   "location and init again")
        if held:
            raise RepositoryExists(f"{backend.location} is not empty and holds no repository; refusing to "
                                   "create one among other files")
        config = RepoConfig(id=secrets.token_hex(32), chunker=chunker, compression_level=compression_level,
                            pack_size=pack_size)
        keys = keys or MasterKeys.generate()
        slot = make_slot(keys, config.id, password, kdf, format_time(datetime.now(timezone.utc)),
                         socket.gethostname(), username(), config.encode())
        key_name = f"keys/{hashlib.sha256(slot).hexdigest()}"
        backend.put(key_name, slot)
        try:
            backend.put("config", config.encode())  # last: a half-made repository has no config
        except BaseException:  # (a full disk, Ctrl-C): the slot goes too, so that init can simply be run again
            try:
                backend.delete(key_name)
            except Exception:  # noqa: BLE001 -- the first failure is the one to report
                pass
            raise
        return cls(backend, config, keys, key_name)

    @classmethod
    def open(cls, backend: Backend, password: "bytes | Callable[[], bytes]",
             first_slot: "Callable[[str], str | None] | None" = None) -> "Repository":
        """Open with ``password`` (or a function giving it: asked for, or its command run, only once the
        repository is known to exist -- a missing one is exit 10 before any prompt). ``first_slot(repo id)``
        names a key slot to try before the others (the one that opened it last time: each slot tried costs a
        key derivation, and slots with costly parameters could otherwise delay every command)."""
        config, lost = _stored_config(backend)
        if callable(password):
            password = password()
        damaged, foreign, unsealed, starved = 0, [], 0, 0
        repo_id = config.id if config is not None else None
        listed = dict(_slots(backend))
        first = first_slot(repo_id) if first_slot is not None and repo_id is not None else None
        found: list[tuple[str, MasterKeys, RepoConfig]] = []  # (with the config lost: every slot that opens)
        for name in _slot_order(backend, listed, first):
            try:
                if listed[name] > MAX_SLOT:
                    raise IntegrityError("key slot too large")
                data = backend.get(name, 0, listed[name])  # (as listed)
                opened = open_slot(data, password, repo_id)
                if opened is None:
                    if not _slot_sound(name, data):  # (damaged: named in the error, not taken for a wrong password)
                        damaged += 1
                    continue
                keys, sealed = opened[0], _sealed_config(opened[1], opened[2])
            except ForeignSlot as exc:
                foreign.append(str(exc).rsplit(" ", 1)[-1])
                continue
            except MemoryError:  # (parameters within range: this machine's limits, ulimit -v or -u, not the slot's)
                starved += 1
                continue
            except (IntegrityError, ObjectNotFound, ValueError, TypeError, OverflowError):
                damaged += 1
                continue
            if config is not None:
                repo = cls(backend, sealed or config, keys, name)
                if sealed is not None and sealed != config:
                    repo.config_problem = (f"the repository's config differs from the copy sealed in its key slot "
                                           f"({_config_changes(config, sealed)}): it was changed or damaged since "
                                           "init; the sealed copy is used ('vault repair' writes it back)")
                    warnings.warn(repo.config_problem, VaultWarning, stacklevel=2)
                return repo
            if sealed is None:
                unsealed += 1  # (opens, but holds no copy of the lost config)
            else:
                found.append((name, keys, sealed))
        if config is None and found:
            return cls._from_sealed(backend, found, lost)
        if config is None and unsealed:
            raise IntegrityError(f"the repository at {backend.location}: {lost}, and the key slots this password "
                                 "opens hold no copy of it (written before vault sealed one): see docs/operations.md")
        if foreign:
            raise IntegrityError(f"the password opens a key slot of another repository ({foreign[0]}) than config "
                                 f"names ({repo_id}): config's id was changed or damaged, or the key slot was "
                                 "copied in from elsewhere (see docs/operations.md)")
        if not listed:
            raise IntegrityError(f"the repository at {backend.location} has no key slot (keys/ is empty): no "
                                 "password can open it; put keys/ back from a copy of the store")
        if starved:
            raise VaultError(f"not enough memory to derive the key of {starved} key slot(s) (argon2id needs its "
                             "memory cost, 32 MiB by default, and a thread per lane): raise the limits (ulimit -v, "
                             "ulimit -u) and run again; nothing was changed")
        also = f"; and the repository's {lost}" if config is None else ""
        raise WrongPassword(f"wrong password: no key slot of the repository opens with it{_damaged_note(damaged)}"
                            f"{also}")

    @classmethod
    def _from_sealed(cls, backend: Backend, found: list[tuple[str, MasterKeys, RepoConfig]],
                     lost: str) -> "Repository":
        """The repository opened with the config sealed in a key slot, its stored config lost or damaged. The
        slots this password opens must all name one repository, and its keys must open what the store holds
        (a snapshot, else an index segment): a slot copied in from another repository, with that one's
        password, must not turn this one's data into "damage" for repair to drop."""
        ids = sorted({sealed.id for _, _, sealed in found})
        if len(ids) > 1:
            raise IntegrityError(f"the repository at {backend.location}: {lost}, and this password opens key slots "
                                 f"of {len(ids)} different repositories ({', '.join(i[:16] for i in ids)}): put "
                                 "config back by hand (see docs/operations.md)")
        name, keys, sealed = found[0]
        repo = cls(backend, sealed, keys, name)
        what = repo.unopened_kind()
        if what:
            raise IntegrityError(f"the repository at {backend.location}: {lost}, and the key slot this password "
                                 f"opens does not open its {what}: it was copied in from another repository "
                                 "(see docs/operations.md)")
        repo.config_problem = (f"the repository's {lost}: the copy sealed in its key slot is used ('vault repair' "
                               "writes it back)")
        warnings.warn(repo.config_problem, VaultWarning, stacklevel=3)
        return repo

    def unopened_kind(self) -> str | None:
        """None when these keys open what the store holds (one of its first three snapshots, index segments or
        pack headers authenticates; or it holds none); else what they fail to open ("snapshots, packs"). A key slot
        copied in from another repository, with that one's password, and config's id changed to match it,
        must not make this one's data look damaged (repair would drop it)."""
        kinds = []
        for kind, names, load in (("snapshots", self.list_snapshots, self.load_snapshot),
                                  ("index segments", self.list_index, self.load_index),
                                  ("packs", lambda: list(itertools.islice(self.list_packs(), 3)),
                                   lambda pack: self.read_pack_header(*pack))):
            ids = names()[:3]
            for sid in ids:
                try:
                    load(sid)
                    return None
                except (IntegrityError, ObjectNotFound):
                    continue
            if ids:
                kinds.append(kind)
        return ", ".join(kinds) or None

    def foreign(self, kind: str, sid: str) -> bool:
        """True when object ``kind/sid`` (a snapshot manifest or an index segment) holds exactly the bytes its
        name was made from (SHA-256) but these keys do not open it: not damage -- written with other keys
        (another repository's: a key slot copied in, config's id changed to match; or planted). Repair never
        deletes such an object: with the right keys it may be this repository's own."""
        return self._state(kind, sid) == "foreign"

    def keys_open_nothing(self) -> bool:
        """True when the store holds snapshots or index segments, every one intact (its bytes match its name) is
        unopened by these keys, and none opens: the keys are another repository's. (Damage alone never makes
        this true: damaged objects do not match their names, and one object that opens is enough.)"""
        intact = False
        for kind, names in (("snapshots", self.list_snapshots), ("index", self.list_index)):
            for sid in names():
                state = self._state(kind, sid)
                if state == "opens":
                    return False
                intact = intact or state == "foreign"
        return intact

    def _state(self, kind: str, sid: str) -> str | None:
        """Object ``kind/sid`` read once: "opens" (these keys open it), "foreign" (intact, but they do not; a
        manifest too large to be one is not read, and counts here: never deleted for what was not looked at),
        or None (gone, or its bytes do not match its name: damage)."""
        limit = {"snapshots": MAX_MANIFEST, "index": MAX_SEGMENT_STORED, "logs": MAX_LOG}.get(kind)
        if limit is not None and self._listed.get(f"{kind}/{sid}", 0) > limit:
            return "foreign"
        try:
            name = f"{kind}/{sid}"
            data = self.backend.get(name) if limit is None else self.backend.get(name, 0, limit + 1)
        except ObjectNotFound:
            return None
        if limit is not None and len(data) > limit:
            return "foreign"
        if hashlib.sha256(data).hexdigest() != sid:
            return None
        try:
            self._open_verified(kind, sid, data)
        except IntegrityError:
            return "foreign"
        return "opens"

    def _open_verified(self, kind: str, sid: str, data: bytes) -> "Snapshot | index_mod.IndexSegment":
        """A snapshot manifest or index segment from its bytes, already checked against its name."""
        if kind == "snapshots":
            return Snapshot.decode(self.cipher.open(data, SNAPSHOT_AAD, f"snapshot {sid[:8]}"), sid)
        return index_mod.decode(data, self.cipher)

    # --- key slots ----------------------------------------------------------------------------------
    def make_key(self, password: bytes, kdf: KdfParams = KdfParams()) -> tuple[str, bytes]:
        """A new key slot for ``password``: (its name, its bytes), not stored yet."""
        slot = make_slot(self.keys, self.id, password, kdf, format_time(datetime.now(timezone.utc)),
                         socket.gethostname(), username(), self.config.encode())
        return f"keys/{hashlib.sha256(slot).hexdigest()}", slot

    def slot_kdf(self) -> KdfParams | None:
        """The KDF parameters of the key slot that opened the repository (None when it cannot be read now): a
        new slot gets them by default, so that ``key passwd`` never leaves a repository made with a costlier
        KDF behind a cheaper one."""
        try:
            return KdfParams.from_json(slot_info(self.backend.get(self.key_name, 0, MAX_SLOT))["kdf"])
        except (IntegrityError, ObjectNotFound, ValueError, KeyError, TypeError):
            return None

    def add_key(self, password: bytes, kdf: KdfParams = KdfParams()) -> str:
        name, slot = self.make_key(password, kdf)
        self.backend.put(name, slot)
        return name

    def slots_opened_by(self, password: bytes) -> list[str]:
        """The names of the key slots this password opens (each costs one key derivation)."""
        out = []
        for name, size in _slots(self.backend):
            try:
                if open_slot(self.backend.get(name, 0, size), password, self.id) is not None:
                    out.append(name)
            except (IntegrityError, ObjectNotFound, ValueError, KeyError, TypeError):  # (ForeignSlot too)
                continue  # malformed or gone: not this password's
        return out

    def slot_malformed(self, name: str) -> bool:
        """Whether key slot ``name`` is for sure no slot: its bytes read back the same each time and do not parse
        (or are over MAX_SLOT). Asked before one is deleted: a store that cut a read short must never get a good
        slot removed (TruncatedResponse then), and neither must one whose bytes merely differ from its name where
        its key is not (its host field): it still opens with its password (an escrow one, say)."""
        try:
            _read_checked(self.backend, name, slot_info, MAX_SLOT)
        except IntegrityError:
            return True
        except ObjectNotFound:
            return False
        return False

    def list_keys(self) -> list[tuple[str, dict | None]]:
        out = []
        for name, size in _slots(self.backend):
            if size > MAX_SLOT:  # (not read: a slot is ~500 bytes)
                out.append((name, None))
                continue
            try:  # (read as the size listed: a body cut short is retried, never called a malformed slot)
                data = self.backend.get(name, 0, size)
                # (damaged when its bytes do not match its name, even if they still parse: a flipped bit in
                # the salt or the wrapped key parses and opens nothing, and was shown as a healthy slot)
                out.append((name, slot_info(data) if _slot_sound(name, data) else None))
            except (IntegrityError, ObjectNotFound):
                out.append((name, None))
        return out

    # --- blocks ---------------------------------------------------------------------------------------
    def block_id(self, data: bytes | memoryview) -> bytes:
        return block_id(self.keys.mac_key, data)

    def compress(self, data: bytes | memoryview) -> tuple[int, bytes | memoryview]:
        return compress(data, self.config.compression_level)

    def seal_block(self, bid: bytes, data: bytes | memoryview) -> bytes:
        """Compress (when it helps) and encrypt one chunk or tree, bound to its id."""
        flag, payload = self.compress(data)
        return pack_mod.seal_block(self.cipher, bid, flag, payload)

    def open_block(self, entry: pack_mod.PackEntry, blob: bytes | memoryview) -> bytes:
        """Decrypt, decompress and check one stored block against its id. Raises IntegrityError."""
        if len(blob) != entry.length:
            raise IntegrityError(f"block {entry.block_id.hex()[:16]}: short read")
        flag, payload = pack_mod.open_block(self.cipher, entry.block_id, blob)
        plain = decompress(flag, payload, entry.raw_length)
        if self.block_id(plain) != entry.block_id:
            raise IntegrityError(f"block {entry.block_id.hex()[:16]}: content does not match its id")
        return plain

    def open_block_into(self, entry: pack_mod.PackEntry, blob: bytes | memoryview, scratch: "Scratch") -> bytes | memoryview:
        """``open_block`` for streaming readers (restore, verify): decrypts and decompresses into the reusable
        buffers of ``scratch`` (one per thread: no fresh pages faulted in and zeroed for every block); the
        result may be a view into them, valid until ``scratch`` is used again."""
        if len(blob) != entry.length:
            raise IntegrityError(f"block {entry.block_id.hex()[:16]}: short read")
        flag, payload = pack_mod.open_block_into(self.cipher, entry.block_id, blob, scratch.sealed)
        plain = decompress_into(flag, payload, entry.raw_length, scratch.plain)
        if self.block_id(plain) != entry.block_id:
            raise IntegrityError(f"block {entry.block_id.hex()[:16]}: content does not match its id")
        return plain

    def load_block(self, pid: bytes, entry: pack_mod.PackEntry) -> bytes:
        return self.open_block(entry, self.backend.get(pack_name(pid), entry.offset, entry.length))

    def load_tree(self, pid: bytes, entry: pack_mod.PackEntry) -> Tree:
        return Tree.decode(self.load_block(pid, entry))

    # --- packs --------------------------------------------------------------------------------------
    def put_pack(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._land_pack(pack_mod.pack_id(data), len(data), lambda name: self.backend.put(name, data))

    def publish_pack(self, staged, pid: bytes, size: int) -> bytes:
        """``put_pack`` for a pack written piecewise (``backend.stage``) and hashed as it was written."""
        return self._land_pack(pid, size, staged.publish)

    def _land_pack(self, pid: bytes, size: int, store: Callable[[str], None]) -> bytes:
        name = pack_name(pid)
        try:
            store(name)
        except ObjectExists:
            pass  # same name = same bytes: another run stored this pack already
        # verify after write: the store must hold exactly what we sent
        stored = confirmed_size(self.backend, name, size)
        if stored != size:  # a failing store, not damage found in the repository: exit 1, as any I/O error
            raise PermanentError(f"pack {pid.hex()[:16]} was stored with the wrong size ({stored:,} bytes of "
                                 f"{size:,}): the store did not keep what was sent; no snapshot names it -- run again")
        return pid

    def read_pack_header(self, pid: bytes, size: int | None = None) -> list[pack_mod.PackEntry]:
        name = pack_name(pid)
        size = self.backend.size(name) if size is None else size
        tail = self.backend.get(name, max(0, size - 64 * 1024), min(size, 64 * 1024))
        n = pack_mod.header_length(tail, size)
        if n + 4 <= len(tail):
            sealed = tail[len(tail) - 4 - n : len(tail) - 4]
        else:
            sealed = self.backend.get(name, size - 4 - n, n)
        return pack_mod.decode_header(sealed, size, self.cipher)

    def list_packs(self) -> Iterator[tuple[bytes, int]]:
        for name, size in self.backend.list("data/"):
            pid = _hex_name(name, "data/")
            if pid is not None:
                yield pid, size

    # --- index segments -----------------------------------------------------------------------------
    def save_index(self, seg: index_mod.IndexSegment) -> str:
        stored = index_mod.encode(seg, self.cipher)
        sid = index_mod.segment_id(stored).hex()
        self.backend.put(f"index/{sid}", stored)
        return sid

    def check_stored(self, name: str, hex_id: str, size: int | None = None) -> None:
        """An object's bytes still match its name (SHA-256); IntegrityError when not. With its ``size`` it is
        read 4 MiB at a time (a pack may be up to 1 GiB: ``--pack-size``), else whole."""
        if size is None:
            self._load_verified(name, hex_id)
            return
        digest, pos = hashlib.sha256(), 0
        while pos < size:
            piece = self.backend.get(name, pos, min(4 << 20, size - pos))
            if not piece:
                raise IntegrityError(f"{name}: shorter than listed")
            digest.update(piece)
            pos += len(piece)
        if digest.hexdigest() != hex_id:
            raise IntegrityError(f"{name}: content does not match its name (damaged)")

    def load_index(self, sid: str) -> index_mod.IndexSegment:
        return self._open_verified("index", sid, self._load_bounded("index", sid, MAX_SEGMENT_STORED))

    def list_index(self) -> list[str]:
        return self._list_sized("index")

    def _list_sized(self, kind: str) -> list[str]:
        """The ids of ``kind/``'s objects, their sizes noted (``_load_bounded`` reads no object that is listed
        larger than such an object can be: junk of a GiB named by its own hash cost every command GiBs)."""
        out = []
        for n, size in self.backend.list(f"{kind}/"):
            if _hex_name(n, f"{kind}/"):
                sid = n.rsplit("/", 1)[-1]
                self._listed[f"{kind}/{sid}"] = size
                out.append(sid)
        return out

    def listed_size(self, kind: str, sid: str) -> int | None:
        """The size ``kind/sid`` had when ``list_index``/``list_logs`` last listed it (None: not listed so)."""
        return self._listed.get(f"{kind}/{sid}")

    def _load_bounded(self, kind: str, sid: str, limit: int) -> bytes:
        name = f"{kind}/{sid}"
        size = self._listed.get(name)
        if size is not None and size > limit:
            raise IntegrityError(f"{name}: {size:,} bytes listed, more than such an object holds (damaged)")
        return self._load_verified(name, sid, limit=limit)

    # --- snapshots ----------------------------------------------------------------------------------
    def save_snapshot(self, snap: Snapshot) -> str:
        stored = self.cipher.seal(snap.encode(), SNAPSHOT_AAD)
        sid = hashlib.sha256(stored).hexdigest()
        self.backend.put(f"snapshots/{sid}", stored)
        snap.id = sid
        return sid

    def load_snapshot(self, sid: str) -> Snapshot:
        stored = self._load_verified(f"snapshots/{sid}", sid, limit=MAX_MANIFEST)
        return self._open_verified("snapshots", sid, stored)

    def list_snapshots(self) -> list[str]:
        return [n.rsplit("/", 1)[-1] for n, _ in self.backend.list("snapshots/") if _hex_name(n, "snapshots/")]

    def save_log(self, operation: str, policy: str, decisions: list[dict], replaces: str | None = None) -> str:
        """Record a maintenance decision (what forget removed and why; the manifests repair, or a run that lost
        its lock, let go): ``logs/<id>``, sealed JSON with this time and host; ``decisions``: {"id", "tree",
        "keep", "reasons"} each -- a manifest one lets go (keep false) is forgotten, not lost (format.md §17).
        ``replaces``: the id of an unreadable record repair deletes, this one standing for it (what it let go
        stays unknown: ``"replaces_unreadable"``)."""
        doc = {"v": 1, "operation": operation, "time": format_time(datetime.now(timezone.utc)),
               "host": socket.gethostname(), "policy": policy, "decisions": decisions,
               **({"replaces_unreadable": replaces} if replaces else {})}
        stored = self.cipher.seal(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), LOG_AAD)
        lid = hashlib.sha256(stored).hexdigest()
        self.backend.put(f"logs/{lid}", stored)
        return lid

    def load_log(self, lid: str) -> dict:
        return json.loads(self.cipher.open(self._load_bounded("logs", lid, MAX_LOG), LOG_AAD, f"log {lid[:8]}"))

    def log_problem(self, lid: str) -> str | None:
        """What is wrong with ``logs/<lid>`` -- it cannot be read, or is no record of decisions -- or None. A read
        failure that says nothing against the data (the store, this machine) is raised, not reported."""
        try:
            doc = self.load_log(lid)
        except VaultError as exc:
            if not is_damage(exc):
                raise
            return f"unreadable: {exc}"
        except (ValueError, TypeError) as exc:  # (authentic, yet not JSON: written so by a bug or a hostile key holder)
            return f"malformed: {exc}"
        if not isinstance(doc, dict) or not isinstance(doc.get("decisions"), list):
            return "malformed: not a record of decisions"
        return None

    def list_logs(self) -> list[str]:
        return self._list_sized("logs")

    def delete_snapshot(self, sid: str) -> None:
        self.backend.delete(f"snapshots/{sid}")

    def withdraw_snapshot(self, sid: str, tree: bytes | None, operation: str, policy: str, reason: str) -> None:
        """Take back a manifest this run wrote (or a duplicate of it): a ``logs/`` record lets it go first, so no
        machine that read it meanwhile calls it lost; then it is deleted (gone already: nothing to do)."""
        self.save_log(operation, policy, [{"id": sid, **({"tree": tree.hex()} if tree else {}), "keep": False,
                                           "reasons": [reason]}])
        try:
            self.delete_snapshot(sid)
        except ObjectNotFound:
            pass

    def commit_index(self, seg: index_mod.IndexSegment, check_lock: Callable[[], None] | None) -> str:
        """``save_index`` for a run under a shared lock (backup, copy), asking for the lock before and again once
        the segment landed, as ``commit_snapshot`` does: an exclusive command that took the lock for stale
        deletes the packs no segment named when it listed the index, so a segment landing after that would
        name packs that are gone (the next backup would deduplicate against them and write a snapshot that does
        not restore). Such a segment is deleted again and LockLost raised. ``check_lock`` None: no lock."""
        if check_lock is None:
            return self.save_index(seg)
        return _under_lock(check_lock, lambda: self.save_index(seg),
                           lambda sid: self.backend.delete(f"index/{sid}"))

    def commit_snapshot(self, snap: Snapshot, check_lock: Callable[[], None], operation: str) -> str:
        """Write the manifest of a snapshot this run built under a lock, asking for the lock before and again
        once the manifest landed: an exclusive command that took the lock for stale (its host's clock ahead,
        ours suspended) while the manifest was on its way may have deleted this run's packs before the
        manifest was there to name them. Then the manifest is taken back -- a ``logs/`` record lets it go, so
        no machine that read it meanwhile calls it lost -- and LockLost is raised: run again."""
        return _under_lock(check_lock, lambda: self.save_snapshot(snap),
                           lambda sid: self.withdraw_snapshot(
                               sid, snap.tree, operation, "withdrawn: the lock was lost",
                               "withdrawn: the repository lock was lost while the snapshot was being written"))

    def _load_verified(self, name: str, hex_id: str, limit: int | None = None) -> bytes:
        """The object, checked against its name (``_read_checked``: read again when it does not match)."""
        def check(data: bytes) -> bytes:
            if hashlib.sha256(data).hexdigest() != hex_id:
                raise IntegrityError(f"{name}: content does not match its name (damaged)")
            return data

        return _read_checked(self.backend, name, check, limit)

