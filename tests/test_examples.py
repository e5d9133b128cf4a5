"""The shipped examples run as documented."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_api_example_runs(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_text("hello\n")
    (src / "d" / "b.bin").write_bytes(bytes(range(256)) * 1000)
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "api_example.py"), str(src)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "restore identical: True" in p.stdout


def test_quickstart_script_runs(tmp_path):
    src = tmp_path / "sample"
    src.mkdir()
    (src / "x").write_text("quickstart\n")
    p = subprocess.run(["bash", str(ROOT / "examples" / "quickstart.sh"), str(src)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "restore is identical" in p.stdout


def test_systemd_and_cron_examples_name_real_options():
    text = (ROOT / "examples" / "crontab").read_text() + (ROOT / "examples" / "vault-backup.service").read_text()
    for opt in ("--exclude-file", "--tag", "--read-data-subset", "-q"):
        assert opt in text


def test_the_crontab_night_runs_as_written(tmp_path):
    """Every command of examples/crontab (backup + forget --prune, copy, verify subset), run in order as cron
    would, with the paths pointed into tmp: each exits 0."""
    import re
    import shlex

    src = tmp_path / "etc"
    (src / "sub").mkdir(parents=True)
    (src / "hosts").write_text("127.0.0.1 localhost\n")
    (src / "sub" / "x.tmp").write_text("excluded\n")
    repo, offsite = tmp_path / "repo", tmp_path / "offsite"
    pw, pw2, excludes = tmp_path / "pw", tmp_path / "pw2", tmp_path / "excludes"
    pw.write_text("first\n")
    pw2.write_text("second\n")
    excludes.write_text("*.tmp\n")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "VAULT_CACHE_DIR": str(tmp_path / "cache")}
    for k in [k for k in env if k.startswith("VAULT_") and k != "VAULT_CACHE_DIR"]:
        del env[k]
    text = (ROOT / "examples" / "crontab").read_text()
    for line in text.splitlines():
        m = re.match(r"^([A-Z_]+)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2)
    env.update(VAULT_REPOSITORY=str(repo), VAULT_PASSWORD_FILE=str(pw))
    vault = [sys.executable, "-m", "vault.cli.main"]
    subprocess.run(vault + ["init", "--kdf-memory", "1", "--kdf-iterations", "1"], env=env, check=True,
                   capture_output=True)
    subprocess.run(vault + ["init", "--repo", str(offsite), "--kdf-memory", "1", "--kdf-iterations", "1",
                            "--password-file", str(pw2), "--copy-chunker-params-from", str(repo),
                            "--from-password-file", str(pw)], env=env,
                   check=True, capture_output=True)
    jobs = [line.split(None, 6)[6] for line in text.splitlines() if re.match(r"^[0-9*]", line)]
    assert len(jobs) >= 3 and any("forget" in j for j in jobs) and any("copy" in j for j in jobs)
    for job in jobs:
        cmd = (job.replace("/etc /home /var/lib", str(src)).replace("/etc/vault/excludes", str(excludes))
               .replace("/etc/vault/offsite-password", str(pw2)).replace("s3://offsite-bucket/vault", str(offsite))
               .replace("\\%", "%").replace("vault -q", shlex.join(vault) + " -q"))
        p = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, (cmd, p.stdout, p.stderr)
        assert p.stdout == "", (cmd, p.stdout)  # -q: cron mails nothing on success
    out = subprocess.run(vault + ["--json", "--repo", str(offsite), "--password-file", str(pw2), "snapshots"],
                         env=env, capture_output=True, text=True, check=True)
    assert len(json.loads(out.stdout)) == 1
