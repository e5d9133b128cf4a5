"""Generate docs/cli-reference.md from the commands' --help (tests check it is up to date).

Run: python docs/gen_cli_reference.py > docs/cli-reference.md
"""

from __future__ import annotations

import click

from vault.cli.main import _register, cli


def _walk(cmd: click.Command, path: list[str]):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], [*path, name])


def render() -> str:
    _register()
    out = ["# vault CLI reference", "", "Generated from `--help` by `docs/gen_cli_reference.py`; do not edit by hand.", ""]
    for path, cmd in _walk(cli, ["vault"]):
        with click.Context(cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100,
                           help_option_names=["-h", "--help"]) as ctx:
            text = cmd.get_help(ctx)
        out += [f"## {' '.join(path)}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
