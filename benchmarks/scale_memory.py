#!/usr/bin/env python3
"""Peak RSS against repository size: a synthetic index of --blocks blocks (default 10 million, about a 10 TB
repository at 1 MiB chunks), then a small real backup into it, prune planning and verify planning.

  python benchmarks/scale_memory.py [--blocks 10000000] [--workdir /tmp/vault-scale] [--json FILE]

The synthetic packs are sparse files of the indexed size (16 blocks of ~1 MiB each), so listing and size checks
see a consistent repository without 10 TB of disk; their bodies are never read (a structure verify and a prune
dry run read none). Each command runs as a child process; its own peak RSS comes from wait4.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from childrss import finish, run_vault, scratch_repo  # noqa: E402

BLOCKS_PER_PACK = 16
BLOCK = (1 << 20) + 29  # sealed size of a 1 MiB block
PACKS_PER_SEGMENT = 64


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=10_000_000)
    ap.add_argument("--workdir", default="/tmp/vault-scale")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    from vault import index as index_mod
    from vault.backend.local import LocalBackend
    from vault.pack import DATA, PackEntry
    from vault.repository import Repository, pack_name

    repo_dir, _cache, env = scratch_repo(args.workdir)
    repo = Repository.open(LocalBackend(repo_dir), b"pw")
    rng = random.Random(1)
    t = time.monotonic()
    n_packs = args.blocks // BLOCKS_PER_PACK
    size = BLOCKS_PER_PACK * BLOCK + 1000
    batch = []
    for p in range(n_packs):
        pid = hashlib.sha256(b"synthetic pack %d" % p).digest()
        entries = [PackEntry(DATA, rng.randbytes(32), i * BLOCK, BLOCK, 1 << 20) for i in range(BLOCKS_PER_PACK)]
        batch.append((pid, size, entries))
        path = os.path.join(repo_dir, pack_name(pid))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: the right size, no disk
        if len(batch) == PACKS_PER_SEGMENT:
            repo.save_index(index_mod.from_packs(batch))
            batch = []
    if batch:
        repo.save_index(index_mod.from_packs(batch))
    build_s = time.monotonic() - t
    src = os.path.join(args.workdir, "src")
    os.makedirs(src)
    for i in range(200):
        with open(os.path.join(src, f"f{i}"), "wb") as f:
            f.write(rng.randbytes(20_000))
    out = {"blocks": n_packs * BLOCKS_PER_PACK, "packs": n_packs, "build_s": round(build_s, 1)}
    for label, cmd in [("first sync (snapshots)", ["snapshots"]), ("backup of a small new tree", ["backup", src]),
                       ("prune planning (--dry-run)", ["--json", "prune", "--dry-run"]),
                       ("verify (structure)", ["--json", "verify"])]:
        r = run_vault(env, *cmd)
        code, err, rss, secs = r.code, r.err, r.peak_rss_mib, r.seconds
        out[label] = {"exit": code, "peak_rss_mib": round(rss, 1), "seconds": round(secs, 1)}
        print(f"{label:30} exit {code}  peak RSS {rss:7.1f} MiB  {secs:6.1f} s" + (f"  {err.strip()[-200:]}"
                                                                                  if code not in (0,) else ""),
              flush=True)
    return finish(out, args.json_out, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
