"""The command-line interface: click commands that parse, make one api call, and render text or JSON."""

import os as _os
import signal as _signal
import sys as _sys


def _interrupted_while_loading(signum, frame):  # noqa: ARG001
    """Ctrl-C while the CLI's modules load (~0.2 s): the same one line and exit code as later, no traceback
    from the middle of an import; ``main`` gives SIGINT back to Python once everything is loaded. Installed
    first, before any other import (it fell into the config import below, and printed a traceback)."""
    _os.write(2, b"vault: interrupted\n")
    _os._exit(130)


try:
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _interrupted_while_loading)
except ValueError:  # imported from another thread than the main one: leave signals alone
    pass

# PYTHONDONTWRITEBYTECODE (set in many container images) would make every command compile vault's modules from
# source again: ~150 ms of a one-second unchanged backup. The CLI keeps a bytecode cache, as an installed wheel
# has one (pip compiles at install; an editable install does not) -- from here on, so that the modules the CLI
# imports first (cli.main, model, config, ...) are cached too. An explicit ``python -B`` (no environment
# variable) is respected; failures to write are ignored by Python. (A library user importing vault.api keeps
# control: this package is the command line's.)
from ..config import bytecode_disabled_by_environment as _bytecode_disabled  # noqa: E402

if _bytecode_disabled():
    _sys.dont_write_bytecode = False
