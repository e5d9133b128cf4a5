#!/usr/bin/env python3
"""Prune of a repository with many packs: peak RSS and what it reads.

  python benchmarks/prune_scale.py [--packs 10000] [--workdir /tmp/vault-prune-scale] [--json FILE]

Builds a repository whose pack target is 4 KiB, so each small file becomes about one pack: two snapshots
of two disjoint halves of --packs files (plus a few packs of trees). Forgets the first snapshot and runs
`vault prune` as a child process, measuring its peak RSS (ru_maxrss) and its requests (--json): it must read
no pack body except those it repacks (GET count <= packs repacked + index segments + a handful).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from childrss import finish, run_vault, scratch_repo  # noqa: E402


def vault(env, *args, check=True):
    p = subprocess.run([sys.executable, "-m", "vault.cli.main", *args], env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"vault {' '.join(args)} -> {p.returncode}\n{p.stderr}")
    return p


def measured(env, *args):
    """Run vault; return (stdout, its own peak RSS in MiB, wall seconds)."""
    r = run_vault(env, *args)
    if r.code != 0:
        raise SystemExit(f"vault {' '.join(args)} -> {r.code}\n{r.err}")
    return r.out, r.peak_rss_mib, r.seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packs", type=int, default=10000)
    ap.add_argument("--workdir", default="/tmp/vault-prune-scale")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    repo, _cache, env = scratch_repo(args.workdir, pack_size=4096)
    rng = random.Random(1)
    halves = []
    for h in range(2):
        src = os.path.join(args.workdir, f"src{h}")
        for i in range(args.packs // 2):
            d = os.path.join(src, f"d{i // 500:03d}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
                f.write(rng.randbytes(5000))  # one block per 4 KiB pack
        halves.append(src)
    t = time.monotonic()
    first = json.loads(vault(env, "--json", "backup", halves[0], "--host", "a").stdout)["snapshot_id"]
    vault(env, "--json", "backup", halves[1], "--host", "b")
    build_s = time.monotonic() - t
    n_packs = sum(len(files) for _, _, files in os.walk(os.path.join(repo, "data")))
    n_index_before = sum(len(files) for _, _, files in os.walk(os.path.join(repo, "index")))
    vault(env, "forget", first)
    stdout, rss, prune_s = measured(env, "--json", "prune")
    res = json.loads(stdout)
    n_index = sum(len(files) for _, _, files in os.walk(os.path.join(repo, "index")))
    verify = json.loads(vault(env, "--json", "verify").stdout)
    out = {"packs_before": n_packs, "build_s": round(build_s, 1), "prune_s": round(prune_s, 1),
           "prune_peak_rss_mib": round(rss, 1), "packs_deleted": res["packs_deleted"],
           "packs_repacked": res["packs_repacked"], "GET": res["requests"]["GET"], "index_segments_before": n_index_before,
           "index_segments_after": n_index,
           "bytes_down": res["bytes_down"], "verify_ok": verify["ok"]}
    return finish(out, args.json_out, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
