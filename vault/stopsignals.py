"""Stop signals (Ctrl-C, SIGTERM, SIGHUP) held back where acting on them would do harm.

The CLI's handlers turn a stop signal into KeyboardInterrupt; they ask ``defer`` first:

* ``held()``: a step that must not be cut in two by an exception (``os.fork``: a signal handled inside one of
  its at-fork callbacks raised there, was printed as "Exception ignored" and lost). The signal is raised again
  when the step is over.
* ``committed()``: the command is past its point of no return (``key passwd`` has begun removing the old
  slots): it finishes and reports what it did; a stop signal after that is ignored, never reported as "aborted"
  for a change that was made.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_pending: list[int] = []
_committed = False


def reset() -> None:
    """At the start of a command (the CLI runs several in one process in tests)."""
    global _depth, _committed
    _depth, _committed = 0, False
    _pending.clear()


def defer(signum: int) -> bool:
    """For a stop signal's handler: True when it must not act on ``signum`` now."""
    if _committed:
        return True
    if _depth:
        _pending.append(signum)
        return True
    return False


@contextmanager
def held() -> Iterator[None]:
    """Stop signals arriving in the block are acted on at its end (in this process: a forked child drops them)."""
    global _depth
    pid = os.getpid()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending:
            signum = _pending[0]
            _pending.clear()
            if os.getpid() == pid:
                signal.raise_signal(signum)  # (handled at once, or when the caller unblocks it)


def committed() -> None:
    """From now on the command runs to its end: stop signals are ignored."""
    global _committed
    _committed = True
