#!/usr/bin/env python3
"""Benchmark vault against restic and borg on the shared corpus, in one run.

  python benchmarks/bench.py [--scale 1] [--reps 3] [--seed 42] [--workdir /tmp/vault-bench]
                             [--tools vault,restic,borg] [--scenarios S1,S2,S3,S4,S5]
                             [--json FILE] [--keep]

Scenarios (per tool, per repetition, on a fresh cp -a copy of the cached corpus):
  S1  first backup into a freshly initialised, encrypted repository
  S2  the same backup again, nothing changed
  S3  backup after mutate_corpus.py applied one "day of changes" to the copy
  S4  full restore of the latest (S3) snapshot into an empty dir, checked with treehash.py compare
  S5  full verify with data read (vault verify --read-data / restic check --read-data /
      borg check --verify-data)

Per command: wall time, CPU time (user+sys of the child and its waited-for children, from wait4),
peak RSS (ru_maxrss of the child, i.e. the largest single process), peak PSS of the whole process tree
(sampled every 50 ms: vault restores in worker processes), repository size (apparent bytes) after S1 and S3 and the bytes S3 added. Then medians over --reps and vault / best-peer ratios
(lower is better). Runs are warm-cache for every tool alike (the page cache is not dropped).
See benchmarks/README.md.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

BENCH_DIR = "/work/shared/bench"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
ALL_TOOLS = ["vault", "restic", "borg"]
ALL_SCENARIOS = ["S1", "S2", "S3", "S4", "S5"]
SCEN_TITLE = {"S1": "first backup", "S2": "unchanged re-run", "S3": "backup after change",
              "S4": "full restore", "S5": "verify (read data)"}
# what must have run (and succeeded) before a scenario can run
DEPENDS = {"S1": [], "S2": ["S1"], "S3": ["S1"], "S4": ["S3"], "S5": ["S3"]}
PASSWORD = "vault-bench-password"
MiB = 1 << 20


# ---------------------------------------------------------------- helpers
def log(msg=""):
    print(msg, flush=True)


def tree_bytes(path):
    """Apparent size (sum of st_size of regular files, like `du -sb` without directory blocks)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
    return total


def tail(path, nbytes=1500):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


_last_delete = 0.0  # when rmtree last removed a tree (see --settle)


def rmtree(path):
    global _last_delete
    if os.path.lexists(path):
        # restic/borg may leave read-only files (restic makes repo files 0400/0600, dirs 0700)
        def onerror(func, p, exc):
            try:
                os.chmod(os.path.dirname(p), 0o700)
                os.chmod(p, 0o700)
                func(p)
            except OSError:
                pass
        shutil.rmtree(path, onerror=onerror)
        _last_delete = time.monotonic()


def settle(args, tool_name, rep):
    """Before a restore: ext4 without a journal (this VM's root filesystem) will not reuse an inode for 60 s
    after it was freed, and finding a free one then scans the inode table past every recently freed one
    (``recently_deleted`` in fs/ext4/ialloc.c): creating 55,000 files right after the bench deleted a copy of
    the corpus cost every tool 10-30 s of system time, varying run to run. Wait out that window."""
    os.sync()
    wait = args.settle - (time.monotonic() - _last_delete)
    if wait > 0:
        log(f"  rep {rep} {tool_name}: waiting {wait:.0f}s for freed inodes to settle before the restore")
        time.sleep(wait)


def quick(cmd, env=None, cwd=None, timeout=60):
    """Run a short command; return (rc, stdout+stderr)."""
    try:
        p = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout.decode("utf-8", "replace").strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)


def _tree_pss_kib(pid):
    """PSS of process ``pid`` and all its descendants (KiB): the memory a multi-process tool uses in all,
    each page shared between its processes counted once. 0 where /proc has no smaps_rollup."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            pass
    return total


class TreeMemory(threading.Thread):
    """Samples the summed PSS of a process tree every 50 ms until stopped; ``peak_mib``."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self):
        while not self.done.wait(0.05):
            self.peak = max(self.peak, _tree_pss_kib(self.pid))

    @property
    def peak_mib(self):
        return self.peak / 1024.0


def measure(cmd, env, cwd, out_path, err_path, timeout):
    """Run cmd, reap it with wait4: wall, CPU (user+sys incl. its reaped children), peak RSS (the largest
    process) and peak PSS of the whole process tree (sampled)."""
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        except OSError as e:
            err.write(f"cannot start {cmd[0]}: {e}\n".encode())
            return {"rc": 127, "wall_s": 0.0, "cpu_s": 0.0, "user_s": 0.0, "sys_s": 0.0, "rss_mib": 0.0,
                    "pss_mib": 0.0, "timed_out": False}
        timed_out = []

        def kill():
            timed_out.append(True)
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the child's own session, nothing else
            except OSError:
                pass
        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        sampler = TreeMemory(p.pid)
        sampler.start()
        try:
            while True:
                try:
                    _, status, ru = os.wait4(p.pid, 0)
                    break
                except InterruptedError:
                    continue
                except KeyboardInterrupt:
                    kill()
                    os.wait4(p.pid, 0)
                    p.returncode = -9
                    raise
        finally:
            sampler.done.set()
            if timer:
                timer.cancel()
        wall = time.perf_counter() - t0
        sampler.join()
        rc = os.waitstatus_to_exitcode(status)
        p.returncode = rc  # reaped by us: keep Popen from waiting again
    return {"rc": rc, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime,
            "sys_s": ru.ru_stime, "rss_mib": ru.ru_maxrss / 1024.0,  # ru_maxrss is KiB on Linux
            "pss_mib": sampler.peak_mib, "timed_out": bool(timed_out)}


def find_restored_root(target, src):
    """restic/vault restore TARGET/abs/src; borg extracts src without its leading '/' under cwd."""
    cand = os.path.join(target, src.lstrip("/"))
    if os.path.isdir(cand):
        return cand
    markers = ("db", "logs", "tiny", "special")
    if all(os.path.isdir(os.path.join(target, m)) for m in markers):
        return target  # a tool that restores the snapshot root relative to the target
    for dirpath, dirnames, _ in os.walk(target):  # last resort: look for the corpus layout
        if all(m in dirnames for m in markers):
            return dirpath
        if dirpath[len(target):].count(os.sep) > 8:
            dirnames[:] = []
    return None


# ---------------------------------------------------------------- tools
class Tool:
    name = "?"
    ok_codes = (0,)
    warn_codes = ()

    def __init__(self, base, src):
        self.base = base            # per (rep, tool) directory
        self.src = src
        self.repo = os.path.join(base, "repo")
        self.cache = os.path.join(base, "cache")
        os.makedirs(self.cache, exist_ok=True)

    def env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RESTIC_", "BORG_", "VAULT_"))}
        env["XDG_CACHE_HOME"] = os.path.join(self.cache, "xdg-cache")
        env["XDG_CONFIG_HOME"] = os.path.join(self.cache, "xdg-config")
        return env

    def cwd(self, scenario, target):
        return self.base


class Restic(Tool):
    name = "restic"
    warn_codes = (3,)  # snapshot written, some source files unreadable

    @staticmethod
    def available(args):
        exe = shutil.which("restic")
        if not exe:
            return None, "restic not on PATH"
        rc, out = quick([exe, "version"])
        return ([exe] if rc == 0 else None), out.splitlines()[0] if out else f"rc {rc}"

    def env(self):
        env = super().env()
        env["RESTIC_PASSWORD"] = PASSWORD
        return env

    def cmd(self, step, target=None):
        base = self.exe + ["-r", self.repo, "--cache-dir", self.cache]
        return {"init": base + ["init"],
                "S1": base + ["backup", self.src], "S2": base + ["backup", self.src],
                "S3": base + ["backup", self.src],
                "S4": base + ["restore", "latest", "--target", target],
                "S5": base + ["check", "--read-data"], "open": base + ["snapshots"]}[step]


class Borg(Tool):
    name = "borg"
    warn_codes = (1,)  # borg: 1 = warning (e.g. file changed while read)

    @staticmethod
    def available(args):
        exe = shutil.which("borg")
        if not exe:
            return None, "borg not on PATH"
        rc, out = quick([exe, "--version"])
        return ([exe] if rc == 0 else None), out.splitlines()[0] if out else f"rc {rc}"

    def env(self):
        env = super().env()
        env["BORG_PASSPHRASE"] = PASSWORD
        env["BORG_BASE_DIR"] = self.cache
        env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
        env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
        return env

    def cmd(self, step, target=None):
        r = self.repo
        if step == "init":
            return self.exe + ["init", "-e", self.encryption, r]
        if step in ("S1", "S2", "S3"):
            return self.exe + ["create", f"{r}::{step}-{{now}}", self.src]
        if step == "S4":
            return self.exe + ["extract", f"{r}::{self.latest}"]
        if step == "open":
            return self.exe + ["list", r]
        return self.exe + ["check", "--verify-data", r]

    def before(self, step, env):
        if step == "S4":  # borg has no "latest" for extract: resolve the newest archive name (not timed)
            rc, out = quick(self.exe + ["list", "--short", "--last", "1", self.repo], env=env, timeout=600)
            self.latest = out.splitlines()[-1].strip() if rc == 0 and out else "S3"

    def cwd(self, step, target):
        return target if step == "S4" else self.base  # borg extract writes into cwd


class Vault(Tool):
    name = "vault"
    warn_codes = (3,)  # backup written, some source files unreadable

    @staticmethod
    def available(args):
        env = dict(os.environ)
        # the console script installed next to this interpreter, not a version-manager shim found on PATH
        # (a pyenv shim is a chain of bash scripts that adds ~0.15 s to every command)
        beside = os.path.join(os.path.dirname(sys.executable), "vault")
        if args.vault_cmd:
            exe = shlex.split(args.vault_cmd)
        elif os.access(beside, os.X_OK):
            exe = [beside]
        elif shutil.which("vault"):
            exe = [shutil.which("vault")]
        else:
            exe = [sys.executable, "-m", "vault.cli.main"]
            env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        rc, out = quick(exe + ["--help"], env=env)
        if rc != 0:
            return None, f"`{' '.join(exe)} --help` failed (rc {rc}): {out[-300:]}"
        rc, ver = quick(exe + ["--version"], env=env)
        ver = ver.splitlines()[-1] if rc == 0 and ver else "vault (no --version)"
        rc, head = quick(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"])
        if rc == 0:
            # read-only: --no-optional-locks keeps status from refreshing .git/index
            rc2, dirty = quick(["git", "--no-optional-locks", "-C", REPO_ROOT, "status", "--porcelain",
                                "--untracked-files=no"])
            ver += f"  [{REPO_ROOT} @ {head}{' +dirty' if rc2 == 0 and dirty else ''}]"
        if not args.vault_cmd:  # which vault package gets imported (a non-editable install may be stale)
            rc, where = quick([sys.executable, "-c", "import os, vault; print(os.path.dirname(vault.__file__))"],
                              env=env, cwd="/")
            if rc == 0:
                where = where.splitlines()[-1]
                ver += f"  package {where}"
                if not os.path.realpath(where).startswith(os.path.realpath(REPO_ROOT) + os.sep):
                    ver += "  WARNING: not this checkout"
        return exe, f"{ver}  via `{' '.join(exe)}`"

    def env(self):
        env = super().env()
        env["VAULT_PASSWORD"] = PASSWORD
        env["VAULT_CACHE_DIR"] = self.cache
        if self.exe[:3] == [sys.executable, "-m", "vault.cli.main"]:
            env["PYTHONPATH"] = REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        return env

    def cmd(self, step, target=None):
        base = self.exe + ["--repo", self.repo]
        return {"init": base + ["init"],
                "S1": base + ["backup", self.src], "S2": base + ["backup", self.src],
                "S3": base + ["backup", self.src],
                "S4": base + ["restore", "latest", "--target", target],
                "S5": base + ["verify", "--read-data"], "open": base + ["snapshots"]}[step]


TOOL_CLASSES = {"vault": Vault, "restic": Restic, "borg": Borg}


# ---------------------------------------------------------------- corpus
def corpus(args):
    """Make the corpus once per (scale, seed) and reuse it; verify the cached tree's fingerprint."""
    cdir = os.path.join(args.workdir, "corpus", f"scale{args.scale:g}-seed{args.seed}")
    tree, info = os.path.join(cdir, "tree"), os.path.join(cdir, "make_corpus.out")
    fp = None
    if os.path.isdir(tree) and os.path.isfile(info):
        with open(info) as f:
            text = f.read()
        m = re.search(r"^fingerprint (\w+)", text, re.M)
        if m:
            t0 = time.perf_counter()
            rc, out = quick([sys.executable, os.path.join(BENCH_DIR, "treehash.py"), "digest", tree], timeout=3600)
            if rc == 0 and out.strip() == m.group(1):
                fp = m.group(1)
                log(f"corpus: reusing {tree} (fingerprint checked in {time.perf_counter() - t0:.1f}s)")
            else:
                log("corpus: cached tree does not match its fingerprint; rebuilding")
    if fp is None:
        os.makedirs(cdir, exist_ok=True)
        log(f"corpus: building {tree} (scale {args.scale:g}, seed {args.seed}) ...")
        t0 = time.perf_counter()
        p = subprocess.run([args.corpus_python, os.path.join(BENCH_DIR, "make_corpus.py"), tree,
                            "--scale", str(args.scale), "--seed", str(args.seed), "--force"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.exit(f"make_corpus.py failed (rc {p.returncode}):\n{p.stderr[-2000:]}")
        text = p.stdout + ("".join(f"# {line}\n" for line in p.stderr.splitlines()))
        with open(info, "w") as f:
            f.write(text)
        fp = re.search(r"^fingerprint (\w+)", text, re.M).group(1)
        log(f"corpus: built in {time.perf_counter() - t0:.1f}s")
    m = re.search(r"^total\s+(\d+)\s+(\d+)", text, re.M)
    nfiles, nbytes = (int(m.group(1)), int(m.group(2))) if m else (0, tree_bytes(tree))
    return {"path": tree, "fingerprint": fp, "files": nfiles, "bytes": nbytes, "make_corpus_output": text}


# ---------------------------------------------------------------- environment
def environment(args, tools_avail):
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
        m = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
        cpu_model = m.group(1) if m else ""
        flags = set(re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M).group(1).split())
    except (OSError, AttributeError):
        flags = set()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024} MiB"
    except (OSError, ValueError, IndexError):
        pass
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "kernel": platform.release(),
        "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model, "cpu_flags": sorted(flags & {"aes", "sha_ni", "avx2", "avx512f"}),
        "memory": mem, "python": f"{sys.version.split()[0]} ({sys.executable})",
        "corpus_python": args.corpus_python,
        "workdir": args.workdir,
        "tools": {name: info for name, (_, info) in tools_avail.items()},
        "borg_encryption": args.borg_encryption,
        "cache": "warm (page cache not dropped; same for every tool)",
    }
    for key, path in (("workdir_fs", args.workdir), ("restore_fs", args.restore_dir or args.workdir)):
        rc, out = quick(["df", "-T", path])
        if rc == 0 and len(out.splitlines()) > 1:
            env[key] = out.splitlines()[-1].split()[1] + " " + out.splitlines()[-1].split()[0]
    journals = os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []
    env["ext4_journals"] = journals  # a device missing here runs ext4 without a journal (see --settle)
    env["restore_dir"] = args.restore_dir
    env["settle_s"] = args.settle
    return env


# ---------------------------------------------------------------- one tool, one repetition
def run_tool(args, rep, tool_name, exe, corpus_info, results, results_open):
    rundir = os.path.join(args.workdir, "runs", f"rep{rep}-{tool_name}")
    src = os.path.join(args.workdir, "src")
    logs = os.path.join(args.workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    rmtree(rundir)
    os.makedirs(rundir)

    # fresh copy of the corpus, mtimes preserved; sync so writeback is not charged to the tool
    rmtree(src)
    t0 = time.perf_counter()
    rc, out = quick(["cp", "-a", corpus_info["path"], src], timeout=None)
    if rc != 0:
        log(f"  rep {rep} {tool_name}: cp -a failed: {out[-500:]}")
        return
    os.sync()
    log(f"  rep {rep} {tool_name}: copied corpus in {time.perf_counter() - t0:.1f}s")

    tool = TOOL_CLASSES[tool_name](rundir, src)
    tool.exe = exe
    tool.encryption = args.borg_encryption
    env = tool.env()
    needed = set()
    for s in args.scenarios:
        stack = [s]
        while stack:
            x = stack.pop()
            needed.add(x)
            stack.extend(DEPENDS[x])
    opens = results_open
    done = {}   # step -> ok
    sizes = {}

    def record(step, m, extra=None):
        r = {"rep": rep, "tool": tool_name, "scenario": step, "selected": step in args.scenarios}
        r.update(m)
        if extra:
            r.update(extra)
        if step not in ("init", "open"):
            results.append(r)
        elif step == "open":
            opens.append(r)
        return r

    def run(step, target=None):
        if hasattr(tool, "before"):
            tool.before(step, env)
        cmd = tool.cmd(step, target)
        stem = os.path.join(logs, f"rep{rep}-{tool_name}-{step}")
        m = measure(cmd, env, tool.cwd(step, target), stem + ".out", stem + ".err", args.timeout)
        m["cmd"] = " ".join(shlex.quote(c) for c in cmd)
        m["ok"] = m["rc"] in tool.ok_codes + tool.warn_codes and not m["timed_out"]
        m["warning"] = m["rc"] in tool.warn_codes
        if not m["ok"]:
            m["stderr_tail"] = tail(stem + ".err") or tail(stem + ".out")
        return m

    def show(step, m, more=""):
        tag = "" if step in ("init", "open") or step in args.scenarios else " (prerequisite)"
        if m.get("skipped"):
            log(f"  rep {rep} {tool_name:6} {step:4} SKIPPED: {m['skipped']}")
            return
        status = "ok" if m["ok"] and not m.get("warning") else ("WARN rc %d" % m["rc"] if m["ok"] else
                                                                   "FAILED rc %d" % m["rc"])
        if m.get("timed_out"):
            status = f"TIMEOUT after {args.timeout}s"
        log(f"  rep {rep} {tool_name:6} {step:4} {status:10} wall {m['wall_s']:8.2f}s  cpu {m['cpu_s']:8.2f}s  "
            f"(usr {m['user_s']:.2f} sys {m['sys_s']:.2f})  rss {m['rss_mib']:7.1f} MiB  "
            f"pss(all) {m.get('pss_mib', 0):6.1f} MiB{more}{tag}")
        if not m["ok"]:
            for line in m.get("stderr_tail", "").splitlines()[-8:]:
                log(f"      | {line}")

    m = run("init")
    show("init", m)
    if not m["ok"]:
        for s in ALL_SCENARIOS:
            if s in needed:
                r = record(s, {"skipped": f"init failed (rc {m['rc']})", "ok": False,
                               "stderr_tail": m.get("stderr_tail", "")})
                show(s, r)
        return finish(args, rundir, src)

    for step in ALL_SCENARIOS:
        if step not in needed:
            continue
        missing = [d for d in DEPENDS[step] if not done.get(d)]
        if missing:
            r = record(step, {"skipped": f"{','.join(missing)} did not succeed", "ok": False})
            show(step, r)
            done[step] = False
            continue
        extra, more = {}, ""
        if step == "S3":
            sizes["before_S3"] = tree_bytes(tool.repo)
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, os.path.join(BENCH_DIR, "mutate_corpus.py"), src,
                                "--seed", str(args.seed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
            os.sync()
            if p.returncode != 0:
                r = record(step, {"skipped": f"mutate_corpus.py failed: {p.stdout[-500:]}", "ok": False})
                show(step, r)
                done[step] = False
                continue
            log(f"  rep {rep} {tool_name}: mutated copy in {time.perf_counter() - t0:.1f}s: {p.stdout.strip()}")
            extra["mutate"] = p.stdout.strip()
        target = None
        if step == "S4":
            target = os.path.join(args.restore_dir or rundir, f"restore-rep{rep}-{tool_name}")
            rmtree(target)
            os.makedirs(target)
            settle(args, tool_name, rep)
        m = run(step, target)
        if step in ("S1", "S2", "S3") and m["ok"]:
            size = tree_bytes(tool.repo)
            extra["repo_bytes"] = size
            extra["cache_bytes"] = tree_bytes(tool.cache)
            more = f"  repo {size / MiB:9.1f} MiB"
            if step == "S3":
                extra["added_bytes"] = size - sizes["before_S3"]
                more += f"  (+{extra['added_bytes'] / MiB:.1f} MiB)"
        if step in ("S1", "S4") and m["ok"] and m["wall_s"] > 0:
            extra["mib_per_s"] = corpus_info["bytes"] / MiB / m["wall_s"]
            more += f"  {extra['mib_per_s']:6.1f} MiB/s"
        if step == "S4" and m["ok"]:
            root = find_restored_root(target, src)
            if root is None:
                extra.update(identical=False, compare_info="restored tree not found under the target")
            else:
                p = subprocess.run([sys.executable, os.path.join(BENCH_DIR, "treehash.py"), "compare", src, root],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                lines = p.stdout.strip().splitlines()
                info = [ln for ln in lines if ln.startswith("info:")]
                extra["identical"] = p.returncode == 0
                extra["compare_info"] = (info[0][6:] if info else "")
                if p.returncode != 0:
                    extra["compare_problems"] = lines[-12:]
            more += "  " + ("IDENTICAL" if extra["identical"] else "DIFFERS") + \
                    (f" ({extra['compare_info']})" if extra.get("compare_info") else "")
            rmtree(target)  # a full copy of the corpus: never kept
        r = record(step, m, extra)
        done[step] = m["ok"]
        show(step, r, more)
        if step == "S1" and m["ok"]:
            # fixed cost of any command on this repo (start-up, key derivation, index load): list snapshots
            mo = run("open")
            record("open", mo)
            show("open", mo, "  (list snapshots: fixed per-command cost, info only)")
        if step == "S4" and not extra.get("identical", True):
            for line in extra.get("compare_problems", []):
                log(f"      | {line}")
    finish(args, rundir, src)


def finish(args, rundir, src):
    rmtree(src)
    if not args.keep:
        rmtree(rundir)


# ---------------------------------------------------------------- summary
def median(xs):
    return statistics.median(xs) if xs else None


def summarize(args, results, tools):
    """{scenario: {tool: {figure: median}}} over successful, selected runs."""
    summary = {}
    for s in args.scenarios:
        for t in tools:
            runs = [r for r in results if r["scenario"] == s and r["tool"] == t]
            ok = [r for r in runs if r.get("ok")]
            d = {"runs": len(runs), "ok": len(ok)}
            for fig in ("wall_s", "cpu_s", "rss_mib", "pss_mib", "repo_bytes", "added_bytes", "mib_per_s", "cache_bytes"):
                vals = [r[fig] for r in ok if r.get(fig) is not None]
                if vals:
                    d[fig] = median(vals)
            if s == "S4":
                d["identical"] = f"{sum(1 for r in ok if r.get('identical'))}/{len(ok)}"
            summary.setdefault(s, {})[t] = d
    return summary


def fmt(v, kind):
    if v is None:
        return "-"
    if kind == "s":
        return f"{v:.2f}"
    if kind == "mib":
        return f"{v:.1f}"
    if kind == "bytes":
        return f"{v / MiB:.1f}"
    return str(v)


def ratio_str(vault, peers):
    peers = [p for p in peers if p]
    if vault is None or not peers:
        return "-", None
    best = min(peers)
    if best <= 0:
        return "-", None
    return f"{vault / best:.2f}", vault / best


def print_table(args, summary, tools):
    peers = [t for t in tools if t != "vault"]
    has_ratio = "vault" in tools and peers
    figures = [("wall_s", "wall s", "s"), ("cpu_s", "cpu s", "s"), ("rss_mib", "peak RSS MiB", "mib"),
               ("pss_mib", "peak PSS MiB, all", "mib")]
    width = 12
    head = f"{'scenario':24} {'figure':18}" + "".join(f"{t:>{width}}" for t in tools)
    if has_ratio:
        head += f"{'vault/best':>{width}}"
    log()
    log(f"Medians over {args.reps} rep(s), successful runs only" +
        ("; ratio = vault / best peer, lower is better" if has_ratio else ""))
    log(head)
    log("-" * len(head))
    ratios = {}
    for s in args.scenarios:
        figs = list(figures)
        if s in ("S1", "S3"):
            figs.append(("repo_bytes", f"repo MiB after {s}", "bytes"))
        if s == "S3":
            figs.append(("added_bytes", "MiB added by S3", "bytes"))
        if s in ("S1", "S4"):
            figs.append(("mib_per_s", "MiB/s (info)", "mib"))
        for i, (fig, label, kind) in enumerate(figs):
            name = f"{s} {SCEN_TITLE[s]}" if i == 0 else ""
            line = f"{name:24} {label:18}" + "".join(
                f"{fmt(summary[s][t].get(fig), kind):>{width}}" for t in tools)
            if has_ratio and fig != "mib_per_s":
                rs, r = ratio_str(summary[s]["vault"].get(fig), [summary[s][p].get(fig) for p in peers])
                line += f"{rs:>{width}}"
                if r is not None:
                    ratios[f"{s}.{fig}"] = r
            log(line)
        failed = [f"{t} {summary[s][t]['ok']}/{summary[s][t]['runs']} ok" for t in tools
                  if summary[s][t]["ok"] < summary[s][t]["runs"] or summary[s][t]["runs"] == 0]
        extra = []
        if s == "S4":
            extra.append("identical: " + ", ".join(f"{t} {summary[s][t]['identical']}" for t in tools))
        if failed:
            extra.append("NOT OK: " + ", ".join(failed))
        for e in extra:
            log(f"{'':24} {e}")
    if has_ratio:
        log("(ratio < 1: vault is better; for S1/S4 throughput, best-peer throughput / vault throughput = same number)")
    return ratios


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="corpus scale: 1 = about 1 GiB (0.1 for quick runs)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per tool (default 3); medians are reported")
    ap.add_argument("--seed", type=int, default=42, help="corpus and mutation seed (default 42)")
    ap.add_argument("--workdir", default="/tmp/vault-bench", help="corpus cache, repos, logs (default %(default)s)")
    ap.add_argument("--tools", default="vault,restic,borg", help="comma list; tools not installed are skipped")
    ap.add_argument("--scenarios", default="S1,S2,S3,S4,S5",
                    help="comma list; prerequisites (S1 for S2/S3, S3 for S4/S5) run anyway but are not tabled")
    ap.add_argument("--json", metavar="FILE", help="also write environment, every run and the medians as JSON")
    ap.add_argument("--restore-dir", metavar="DIR",
                    help="restore (S4) below DIR instead of WORKDIR/runs: e.g. a journaled ext4 when WORKDIR's "
                         "filesystem has no journal (see --settle)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds between the bench's last tree deletion and a restore (ext4 without a journal "
                         "skips inodes freed within 60 s, slowly; 0 = do not wait; default 61, or 0 with "
                         "--restore-dir)")
    ap.add_argument("--keep", action="store_true", help="keep repositories and caches (WORKDIR/runs/)")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="per-command timeout in seconds (0 = none)")
    ap.add_argument("--vault-cmd", help="how to run vault (default: `vault` if on PATH, else python -m vault.cli.main)")
    ap.add_argument("--borg-encryption", default=None,
                    help="borg init -e MODE (default: repokey if the CPU has SHA-NI, else repokey-blake2, "
                         "as borg's docs advise)")
    ap.add_argument("--corpus-python", default=sys.executable,
                    help="interpreter that runs make_corpus.py (its stdlib is part of the corpus)")
    args = ap.parse_args()

    args.workdir = os.path.abspath(args.workdir)
    if args.restore_dir:
        args.restore_dir = os.path.abspath(args.restore_dir)
        os.makedirs(args.restore_dir, exist_ok=True)
    if args.settle is None:
        args.settle = 0.0 if args.restore_dir else 61.0
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    bad = [t for t in args.tools if t not in ALL_TOOLS] + [s for s in args.scenarios if s not in ALL_SCENARIOS]
    if bad:
        ap.error(f"unknown tool/scenario: {', '.join(bad)}")
    args.scenarios = [s for s in ALL_SCENARIOS if s in args.scenarios]
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    if args.borg_encryption is None:
        try:
            with open("/proc/cpuinfo") as f:
                sha_ni = " sha_ni" in f.read()
        except OSError:
            sha_ni = False
        args.borg_encryption = "repokey" if sha_ni else "repokey-blake2"

    tools_avail, tools = {}, []
    for t in args.tools:
        exe, info = TOOL_CLASSES[t].available(args)
        tools_avail[t] = (exe, info if exe else f"NOT RUN: {info}")
        if exe:
            tools.append(t)
    os.makedirs(args.workdir, exist_ok=True)

    env = environment(args, tools_avail)
    log("== environment")
    for k, v in env.items():
        if k == "tools":
            for t, info in v.items():
                log(f"  {t:16} {info}")
        else:
            log(f"  {k:16} {v}")
    if not tools:
        sys.exit("no tool to run")

    log("== corpus")
    c = corpus(args)
    for line in c["make_corpus_output"].splitlines():
        log("  " + line)
    log(f"  using {c['files']} files, {c['bytes']} bytes ({c['bytes'] / MiB:.1f} MiB)")

    # stale scratch dirs from an interrupted run (only our own subdirectories)
    rmtree(os.path.join(args.workdir, "src"))
    if not args.keep:
        rmtree(os.path.join(args.workdir, "runs"))
    rmtree(os.path.join(args.workdir, "logs"))

    log(f"== runs: tools {','.join(tools)}, scenarios {','.join(args.scenarios)}, {args.reps} rep(s); "
        f"logs in {os.path.join(args.workdir, 'logs')}")
    results, opens = [], []
    # untimed warm-up: read the corpus into the page cache and touch the memory a copy needs
    t0 = time.perf_counter()
    warm = os.path.join(args.workdir, "src")
    quick(["cp", "-a", c["path"], warm], timeout=None)
    os.sync()
    rmtree(warm)
    log(f"warm-up copy (untimed): {time.perf_counter() - t0:.1f}s")
    t_start = time.perf_counter()
    try:
        for rep in range(1, args.reps + 1):
            k = (rep - 1) % len(tools)
            order = tools[k:] + tools[:k]  # rotate the order each repetition
            log(f"-- rep {rep}/{args.reps}: order {', '.join(order)}")
            for t in order:
                try:
                    run_tool(args, rep, t, tools_avail[t][0], c, results, opens)
                except Exception as e:  # a bench bug or an environment problem: record, go on
                    import traceback
                    log(f"  rep {rep} {t}: bench error: {e!r}\n" + traceback.format_exc())
                    results.append({"rep": rep, "tool": t, "scenario": "?", "selected": True, "ok": False,
                                    "skipped": f"bench error: {e!r}"})
    except KeyboardInterrupt:
        log("\ninterrupted: summarising what ran")
    log(f"== total bench time {time.perf_counter() - t_start:.0f}s")

    summary = summarize(args, results, tools)
    ratios = print_table(args, summary, tools)
    fixed = []
    for t in tools:
        w = [r["wall_s"] for r in opens if r["tool"] == t and r.get("ok")]
        if w:
            fixed.append(f"{t} {median(w):.2f}s")
    if fixed:
        log("  fixed per-command cost (median wall of listing snapshots): " + ", ".join(fixed))
    for t in tools:
        cb = [r.get("cache_bytes") for r in results if r["tool"] == t and r.get("cache_bytes") is not None]
        if cb:
            log(f"  {t} local cache after last backup: {max(cb) / MiB:.1f} MiB (not counted in repo size)")

    if args.json:
        doc = {"environment": env, "args": {k: v for k, v in vars(args).items()},
               "corpus": {k: v for k, v in c.items()}, "runs": results, "list_snapshots_runs": opens,
               "medians": summary,
               "ratios_vault_over_best_peer": ratios}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        log(f"json written to {args.json}")
    any_fail = any(not r.get("ok") for r in results if r.get("selected"))
    any_diff = any(r.get("identical") is False for r in results)
    return 1 if any_fail or any_diff else 0


if __name__ == "__main__":
    sys.exit(main())
