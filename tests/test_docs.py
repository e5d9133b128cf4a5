"""Documentation that is tested: the CLI reference is current, and every command and option is in usage.md."""

from pathlib import Path

import click
import pytest

from vault.cli.main import _register, cli

ROOT = Path(__file__).resolve().parent.parent


def _commands():
    _register()
    stack = [([], cli)]
    while stack:
        path, cmd = stack.pop()
        yield path, cmd
        if isinstance(cmd, click.Group):
            stack.extend(([*path, n], c) for n, c in cmd.commands.items())


def test_cli_reference_is_generated_from_current_help():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", ROOT / "docs" / "gen_cli_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs" / "cli-reference.md").read_text() == gen.render(), \
        "run: python docs/gen_cli_reference.py > docs/cli-reference.md"


@pytest.mark.parametrize("path,cmd", [(p, c) for p, c in _commands() if p], ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_every_command_and_option_is_in_usage(path, cmd):
    usage = (ROOT / "docs" / "usage.md").read_text()
    assert f"vault {' '.join(path)}" in usage, f"docs/usage.md does not describe 'vault {' '.join(path)}'"
    for p in cmd.params:
        if isinstance(p, click.Option):
            longest = max(p.opts, key=len)
            assert longest in usage, f"docs/usage.md does not mention {longest} of 'vault {' '.join(path)}'"
