"""Run vault as a child process and measure that child alone (peak RSS from wait4), for the scale benchmarks."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Run:
    code: int
    out: str
    err: str
    peak_rss_mib: float
    seconds: float


def run_vault(env: dict, *args: str) -> Run:
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.stdout.read(), p.stderr.read()  # (communicate() would reap the child before wait4)
    _, status, usage = os.wait4(p.pid, 0)
    return Run(os.waitstatus_to_exitcode(status), out, err, usage.ru_maxrss / 1024, time.monotonic() - t)


def scratch_repo(workdir: str, **init_kwargs) -> tuple[str, str, dict]:
    """A fresh local repository (fast KDF, password "pw") under ``workdir``: (repo dir, cache dir, environment
    for vault child processes)."""
    import shutil

    from vault import api
    from vault.config import Settings
    from vault.crypto import FAST_KDF

    shutil.rmtree(workdir, ignore_errors=True)
    repo, cache = os.path.join(workdir, "repo"), os.path.join(workdir, "cache")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "VAULT_REPOSITORY": repo, "VAULT_PASSWORD": "pw", "VAULT_CACHE_DIR": cache,
           "PYTHONPATH": root}
    api.init(Settings(repo=repo, cache_dir=cache).resolved(), b"pw", kdf=FAST_KDF, **init_kwargs)
    return repo, cache, env


def finish(out: dict, json_out: str | None, workdir: str) -> int:
    """Print the results as JSON (and write them to ``json_out``), remove ``workdir``; the exit status."""
    import json
    import shutil

    print(json.dumps(out, indent=2))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(out, f, indent=2)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0
