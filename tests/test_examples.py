"""The shipped examples run as documented."""

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
