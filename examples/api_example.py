"""Using vault as a library: init, back up, list, restore, verify -- no CLI involved.

Run: python examples/api_example.py [SOURCE_DIR]   (CI runs it from tests/test_examples.py)
"""

from __future__ import annotations

import filecmp
import os
import sys
import tempfile

from vault import api
from vault.archiver import BackupOptions
from vault.config import Settings
from vault.crypto import FAST_KDF  # fast key derivation for the example only; omit it in real use
from vault.restorer import RestoreOptions

PASSWORD = b"example-password"


def main(source: str) -> int:
    with tempfile.TemporaryDirectory() as work:
        settings = Settings(repo=os.path.join(work, "repo"), cache_dir=os.path.join(work, "cache")).resolved()
        api.init(settings, PASSWORD, kdf=FAST_KDF)

        result = api.backup(settings, lambda: PASSWORD, BackupOptions(paths=[source], tags=["example"]))
        print(f"snapshot {result.snapshot_id[:8]}: {result.files_new} new files, {result.bytes_added} bytes added")

        with api.session(settings, lambda: PASSWORD) as sess:
            for snap in api.list_snapshots(sess):
                print(f"  {snap.short_id} {snap.time:%Y-%m-%d %H:%M:%S} {snap.host} {snap.paths}")

        target = os.path.join(work, "restore")
        snap, restored = api.restore(settings, lambda: PASSWORD, "latest", RestoreOptions(target=target))
        print(f"restored {restored.files} files; damaged: {len(restored.damaged)}")

        report, _ = api.verify(settings, lambda: PASSWORD, read_data=True)
        print("verify:", "ok" if report.ok else f"{len(report.damage)} problems")

        same = filecmp.dircmp(source, target + os.path.abspath(source))
        identical = not (same.left_only or same.right_only or same.diff_files)
        print("restore identical:", identical)
        return 0 if identical and report.ok and not restored.damaged else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "vault")))
