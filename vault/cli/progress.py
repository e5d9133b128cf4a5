"""A one-line progress display on stderr -- only when stderr is a terminal (never in cron mail or --json)."""

from __future__ import annotations

import sys
import threading
import time

from .common import drop_dead_stderr, human_bytes, is_terminal


class Progress:
    """Called with the run's counters as it goes (from any thread); shows ``line(counters, seconds so far)`` in
    place, at most every ``interval`` seconds."""

    def __init__(self, enabled: bool, interval: float = 0.2):
        self.enabled = enabled and is_terminal(sys.stderr)
        self.interval = interval
        self._last = 0.0
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, stats) -> None:
        if not self.enabled:  # (called for every file restored: off the terminal, nothing more)
            return
        now = time.monotonic()
        if now - self._last < self.interval or not self._lock.acquire(blocking=False):
            return
        try:
            self._last = now
            self._write("\r\033[K" + self.line(stats, now - self._start)[:200])
        finally:
            self._lock.release()

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

    def line(self, stats, elapsed: float) -> str:
        raise NotImplementedError


class BackupProgress(Progress):
    def line(self, stats, elapsed: float) -> str:
        files = stats.files_new + stats.files_changed + stats.files_unmodified
        # (the files' bytes read are known as each batch of files comes back; the packs stored are known as they
        # are stored: during one big file of new data "read" would stand still at 0 while "added" climbed)
        added = max(stats.bytes_added, stats.stored_so_far)
        read = max(stats.bytes_read, added)
        rate = read / max(elapsed, 1e-3)
        return (f"{files} files, {stats.dirs} dirs, {human_bytes(stats.bytes_processed)} seen, "
                f"{human_bytes(read)} read ({human_bytes(rate)}/s), {human_bytes(added)} added")


class RestoreProgress(Progress):
    def line(self, res, elapsed: float) -> str:
        rate = res.bytes_written / max(elapsed, 1e-3)
        return (f"{res.files} files restored, {human_bytes(res.bytes_written)} written ({human_bytes(rate)}/s), "
                f"{len(res.damaged)} damaged, {len(res.errors)} errors, {elapsed:.0f} s")


class VerifyProgress(Progress):
    def line(self, rep, elapsed: float) -> str:
        rate = rep.bytes_read / max(elapsed, 1e-3)
        return (f"{rep.packs_read} packs read, {human_bytes(rep.bytes_read)} ({human_bytes(rate)}/s), "
                f"{len(rep.damage)} damaged objects so far, {elapsed:.0f} s")
