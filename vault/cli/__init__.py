"""The command-line interface: click commands that parse, make one api call, and render text or JSON."""

import os as _os
import signal as _signal


def _interrupted_while_loading(signum, frame):  # noqa: ARG001
    """Ctrl-C while the CLI's modules load (~0.2 s): the same one line and exit code as later, no traceback
    from the middle of an import; ``main`` gives SIGINT back to Python once everything is loaded."""
    _os.write(2, b"vault: interrupted\n")
    _os._exit(130)


try:
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _interrupted_while_loading)
except ValueError:  # imported from another thread than the main one: leave signals alone
    pass
