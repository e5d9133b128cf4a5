"""A one-line progress display on stderr -- only when stderr is a terminal (never in cron mail or --json)."""

from __future__ import annotations

import sys
import time

from .common import drop_dead_stderr, human_bytes, is_terminal


class BackupProgress:
    def __init__(self, enabled: bool, interval: float = 0.2):
        self.enabled = enabled and is_terminal(sys.stderr)
        self.interval = interval
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, stats) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.interval:
            return
        self._last = now
        files = stats.files_new + stats.files_changed + stats.files_unmodified
        rate = stats.bytes_read / max(now - self._start, 1e-3)
        line = (f"{files} files, {stats.dirs} dirs, {human_bytes(stats.bytes_processed)} seen, "
                f"{human_bytes(stats.bytes_read)} read ({human_bytes(rate)}/s), {human_bytes(stats.bytes_added)} added")
        self._write("\r\033[K" + line[:200])

    def done(self) -> None:
        if self.enabled and self._last:
            self._write("\r\033[K")

    def _write(self, text: str) -> None:
        """A terminal that went away (a dropped ssh session: EIO) ends the display, never the backup."""
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except OSError:
            self.enabled = False
            drop_dead_stderr()


