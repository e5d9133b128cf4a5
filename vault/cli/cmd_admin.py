"""Maintenance commands: verify, unlock, key, catalog (and forget/prune/repair/copy placeholders)."""

from __future__ import annotations

import getpass
import sys

import click

from .. import api
from ..config import get_new_password
from ..errors import DamageFound, VaultError
from .common import get_ctx, global_options, human_bytes
from .main import cli


@cli.command()
@click.option("--read-data", is_flag=True, help="Read every pack and check every block.")
@click.option("--read-data-subset", metavar="P%|n/m", help="Read a subset of packs: a percentage (least "
              "recently verified first) or slice n of m.")
@global_options
def verify(read_data: bool, read_data_subset: str | None) -> int:
    """Check the repository; exit 20 with a report naming damaged objects, snapshots and files.

    Example: vault --repo /srv/backup verify --read-data-subset 5%
    """
    c = get_ctx()
    report, requests = api.verify(c.settings, c.password_fn(), read_data, read_data_subset)
    if c.json:
        c.emit_json({"ok": report.ok, "snapshots": report.snapshots, "trees": report.trees,
                     "blocks_referenced": report.blocks_referenced, "packs": report.packs,
                     "packs_read": report.packs_read, "bytes_read": report.bytes_read,
                     "damage": [d.to_json() for d in report.damage], "info": report.info, **requests})
    else:
        # the damage report goes to stderr like every error (so -q and cron mail keep it)
        for d in report.damage:
            c.err(f"damaged: {d.object}: {d.problem}")
            if d.snapshots:
                c.err(f"  snapshots: {' '.join(d.snapshots)}")
            for f in d.files:
                c.err(f"  file: {f}")
        for line in report.info:
            c.out(f"info: {line}")
        c.out(f"checked {report.snapshots} snapshots, {report.trees} trees, {report.packs} packs; read "
              f"{report.packs_read} packs ({human_bytes(report.bytes_read)})")
    if not report.ok:
        c.err(f"vault: verify found {len(report.damage)} problem(s)")
        return DamageFound.exit_code
    c.out("no errors found")
    return 0


@cli.command()
@click.option("--remove-all", is_flag=True, help="Remove every lock, not only stale ones (make sure no "
              "vault process is running).")
@global_options
def unlock(remove_all: bool) -> None:
    """Remove stale locks (left by crashed runs).

    Example: vault --repo /srv/backup unlock
    """
    c = get_ctx()
    removed = api.unlock(c.settings, c.password_fn(), remove_all)
    if c.json:
        c.emit_json({"removed": removed})
    else:
        for r in removed:
            c.out(f"removed {r}")
        c.out(f"{len(removed)} lock(s) removed")


@cli.group()
@global_options
def key() -> None:
    """Manage key slots (passwords that open the repository)."""


def _new_password(file: str | None) -> bytes:
    return get_new_password(file, getpass.getpass if sys.stdin.isatty() else None)


@key.command("list")
@global_options
def key_list() -> None:
    """List key slots. Example: vault --repo /srv/backup key list"""
    c = get_ctx()
    with api.session(c.settings, c.password_fn(), sync=False) as sess:
        keys = api.key_list(sess)
    if c.json:
        c.emit_json(keys)
        return
    for k in keys:
        mark = "*" if k["current"] else " "
        c.out(f"{mark}{k['id'][:8]}  {k.get('created', '?')}  {k.get('username', '?')}@{k.get('host', '?')}"
              + ("  DAMAGED" if k["damaged"] else ""))


@key.command("add")
@click.option("--new-password-file", type=click.Path(dir_okay=False), help="Read the new password from FILE "
              "[env: VAULT_NEW_PASSWORD_FILE, VAULT_NEW_PASSWORD].")
@global_options
def key_add(new_password_file: str | None) -> None:
    """Add a key slot for another password. Example: vault key add --new-password-file pw2"""
    c = get_ctx()
    with api.session(c.settings, c.password_fn(), sync=False) as sess:
        kid = api.key_add(sess, _new_password(new_password_file))
    c.emit_json({"id": kid}) if c.json else c.out(f"added key {kid[:8]}")


@key.command("remove")
@click.argument("key_id")
@global_options
def key_remove(key_id: str) -> None:
    """Remove a key slot (not the one in use). Example: vault key remove 1a2b3c4d"""
    c = get_ctx()
    with api.session(c.settings, c.password_fn(), lock="exclusive", operation="key remove", sync=False) as sess:
        kid = api.key_remove(sess, key_id)
    c.emit_json({"removed": kid}) if c.json else c.out(f"removed key {kid[:8]}")


@key.command("passwd")
@click.option("--new-password-file", type=click.Path(dir_okay=False), help="Read the new password from FILE.")
@global_options
def key_passwd(new_password_file: str | None) -> None:
    """Change the password of the key slot in use. Example: vault key passwd --new-password-file pw2"""
    c = get_ctx()
    with api.session(c.settings, c.password_fn(), lock="exclusive", operation="key passwd", sync=False) as sess:
        kid = api.key_passwd(sess, _new_password(new_password_file))
    c.emit_json({"id": kid}) if c.json else c.out(f"password changed (new key {kid[:8]})")


@cli.group()
@global_options
def catalog() -> None:
    """Manage the local catalog (a cache of the repository)."""


@catalog.command("rebuild")
@global_options
def catalog_rebuild() -> None:
    """Delete the local catalog and rebuild it from the repository alone.

    Example: vault --repo /srv/backup catalog rebuild
    """
    c = get_ctx()
    d = api.catalog_rebuild(c.settings, c.password_fn())
    if c.json:
        c.emit_json(d)
    else:
        c.out(f"catalog rebuilt: {d['snapshots']} snapshots, {d['packs']} packs, {d['blocks']} blocks")
        for p in d["problems"]:
            c.err(f"warning: {p}")


def _not_yet(name: str, doc: str) -> None:
    @cli.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, help=doc)
    @global_options
    def _cmd() -> None:
        raise VaultError(f"'vault {name}' is not available in this version yet")


for _name, _doc in (("forget", "Remove snapshots by retention policy (not available yet)."),
                    ("prune", "Delete unreferenced data (not available yet)."),
                    ("repair", "Repair index or snapshots (not available yet)."),
                    ("copy", "Copy snapshots to another repository (not available yet).")):
    _not_yet(_name, _doc)
