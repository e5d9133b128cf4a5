"""``python -m vault`` runs the command-line interface."""

from vault.cli.main import entry

entry()
