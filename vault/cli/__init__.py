"""The command-line interface: click commands that parse, make one api call, and render text or JSON."""

import sys

# PYTHONDONTWRITEBYTECODE (set in many container images) would make every command compile vault's modules
# from source again: ~150 ms of a one-second unchanged backup. The CLI process is ours, so it keeps a
# bytecode cache as an installed wheel has one (pip compiles at install; an editable install does not).
# Library users who import vault.api keep their interpreter's setting.
sys.dont_write_bytecode = False
