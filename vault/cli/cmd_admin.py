"""Maintenance commands: verify, forget, prune, tag, copy, repair, unlock, key, catalog."""

from __future__ import annotations


import click

from .. import api
from ..config import get_new_password
from .. import retention
from ..errors import DamageFound, UsageError
from ..checker import parse_size
from ..pruner import PruneOptions
from .common import get_ctx, global_options, human_bytes, local_time, printable, split_tags, terminal_prompt, texts
from .main import cli
from .progress import VerifyProgress


@cli.command()
@click.option("--read-data", is_flag=True, help="Read every pack and check every block.")
@click.option("--read-data-subset", metavar="P%|n/m", help="Read a subset of packs: a percentage (least "
              "recently verified first) or slice n of m.")
@click.option("--max-bytes", metavar="SIZE", help="Read at most SIZE of pack data this run (e.g. 2G: a cloud "
              "egress budget); the packs verified least recently go first. Implies reading data.")
@global_options
def verify(read_data: bool, read_data_subset: str | None, max_bytes: str | None) -> int:
    """Check the repository; exit 20 with a report naming damaged objects, snapshots and files.

    Example: vault --repo /srv/backup verify --read-data-subset 5%
    """
    c = get_ctx()
    if read_data and read_data_subset is not None:
        raise UsageError("--read-data reads every pack and --read-data-subset some of them: give one")
    progress = VerifyProgress(enabled=not (c.quiet or c.json))
    try:
        report, requests = api.verify(c.settings, c.password_fn(), read_data, read_data_subset,
                                      parse_size(max_bytes) if max_bytes is not None else None, progress=progress)
    finally:
        progress.done()
    if c.json:
        c.emit_json({"ok": report.ok, "snapshots": report.snapshots, "trees": report.trees,
                     "blocks_referenced": report.blocks_referenced, "packs": report.packs,
                     "packs_read": report.packs_read, "bytes_read": report.bytes_read,
                     "damage": [d.to_json() for d in report.damage], "info": report.info,
                     "coverage": report.coverage, **requests})
    else:
        # the damage report goes to stderr like every error (so -q and cron mail keep it)
        for d in report.damage:
            c.err(printable(f"damaged: {d.object}: {d.problem}"))
            if d.snapshots:
                c.err(f"  snapshots: {' '.join(d.snapshots)}")
            for f in d.files:
                c.err(printable(f"  file: {f}"))
        for line in report.info:
            c.out(f"info: {line}")
        c.out(f"checked {report.snapshots} snapshots, {report.trees} trees, {report.packs} packs; read "
              f"{report.packs_read} packs ({human_bytes(report.bytes_read)})")
    if not report.ok:
        c.err(f"vault: verify found {len(report.damage)} problem(s)")
        return DamageFound.exit_code
    c.out("no errors found")
    return 0


def _percent(ctx, param, value: str) -> float:
    try:
        v = float(value.strip().rstrip("%"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a percentage (e.g. 10%)") from None
    if not 0 <= v <= 100:
        raise click.BadParameter(f"{value!r} is not between 0% and 100%")
    return v / 100


def _duration(ctx, param, value: str | None):
    if value is None:
        return None
    span = retention.parse_duration(value)  # UsageError (exit 2) when malformed
    return span if any((span.years, span.months, span.days, span.hours)) else None  # (0d: not given, as restic)


def _group_by(ctx, param, value: str):
    try:
        return retention.parse_group_by(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_max_unused = click.option("--max-unused", default="10%", show_default=True, callback=_percent, metavar="PCT",
                           help="Repack a pack when more than this share of it is unreferenced.")


def _print_prune(c, rep) -> None:
    verb, would = ("would free", "to be ") if rep.dry_run else ("freed", "")
    c.out(f"prune{' (dry run: nothing changed)' if rep.dry_run else ''}: {rep.packs_deleted} packs {would}deleted, "
          f"{rep.packs_repacked} {would}repacked ({rep.blocks_repacked} blocks into {rep.packs_written} new packs), "
          f"{rep.packs_unindexed_deleted} leftovers {would}removed, {rep.packs_kept} kept; {verb} "
          f"{human_bytes(rep.bytes_freed)} of {human_bytes(rep.bytes_total)}"
          + (f" ({rep.temp_files_removed} temp file(s), {human_bytes(rep.temp_bytes_removed)}: of killed runs, which "
             "the prune removes, or of a write under way)" if rep.temp_files_removed and rep.dry_run else
             f" (and {rep.temp_files_removed} temp file(s) of killed runs, {human_bytes(rep.temp_bytes_removed)}, "
             "removed)" if rep.temp_files_removed else ""))
    for w in rep.warnings:
        c.err(printable(f"warning: {w}"))


@cli.command()
@click.argument("snapshots", nargs=-1)
@click.option("--keep-last", type=click.IntRange(0), default=0, metavar="N", help="Keep the N newest snapshots.")
@click.option("--keep-hourly", type=click.IntRange(0), default=0, metavar="N",
              help="Keep the newest snapshot of each of the last N hours that have one.")
@click.option("--keep-daily", type=click.IntRange(0), default=0, metavar="N", help="... of the last N days.")
@click.option("--keep-weekly", type=click.IntRange(0), default=0, metavar="N", help="... of the last N ISO weeks.")
@click.option("--keep-monthly", type=click.IntRange(0), default=0, metavar="N", help="... of the last N months.")
@click.option("--keep-yearly", type=click.IntRange(0), default=0, metavar="N", help="... of the last N years.")
@click.option("--keep-within", callback=_duration, metavar="DURATION",
              help="Keep every snapshot newer than the newest one minus DURATION (e.g. 30d, 2w, 1y6m, 12h).")
@click.option("--keep-tag", "keep_tags", multiple=True, metavar="TAG",
              help="Keep every snapshot with this tag (a,b = both); repeatable.")
@click.option("--host", "hosts", multiple=True, help="Only consider snapshots of this host.")
@click.option("--tag", "tags", multiple=True, help="Only consider snapshots with this tag (a,b = both).")
@click.option("--path", "paths", multiple=True, help="Only consider snapshots of this path.")
@click.option("--group-by", default="host,paths", show_default=True, callback=_group_by, metavar="FIELDS",
              help="Apply the policy per group: any of host,paths,tags, or '' for one group.")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be forgotten (and pruned); change nothing.")
@click.option("--prune", "do_prune", is_flag=True, help="Prune right after forgetting.")
@_max_unused
@global_options
def forget(snapshots, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within,
           keep_tags, hosts, tags, paths, group_by, dry_run, do_prune, max_unused) -> None:
    """Forget snapshots by retention policy (or the SNAPSHOTS named), per host and paths; the newest snapshot
    of each group is always kept. Data is freed by prune (--prune does both).

    Example: vault --repo /srv/backup forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --prune
    """
    c = get_ctx()
    policy = retention.Policy(last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
                              monthly=keep_monthly, yearly=keep_yearly, within=keep_within,
                              tags=tuple(texts(keep_tags)))
    if snapshots and not policy.is_empty():
        raise UsageError("give either snapshots to forget or a --keep-* policy, not both")
    res = api.forget(c.settings, c.password_fn(), list(snapshots), None if snapshots else policy,
                     api.SnapshotFilter(texts(hosts), texts(tags), list(paths)), group_by, dry_run,
                     PruneOptions(max_unused=max_unused) if do_prune else None, log=c.err if c.verbose else _quiet)
    if res.still_listed:
        c.err(f"vault: warning: the store still lists {len(res.still_listed)} of the snapshots it was told to delete "
              f"({' '.join(s[:8] for s in res.still_listed)}): it acknowledged the deletes but did not carry them "
              "out, or its listing is not up to date yet; run 'vault forget' again later")
    if c.json:
        c.emit_json(res.to_json())
        _prune_failed(c, res)
        return
    for g in res.groups:
        key = " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in g.key.items()) or "all"
        c.out(printable(f"{key}: keep {len(g.keep)}, {'would forget' if dry_run else 'forget'} {len(g.forget)}"))
        for d in g.decisions:
            when = local_time(d.snapshot.time)
            c.out(printable(f"  {'keep  ' if d.keep else 'forget'}  {d.snapshot.short_id}  {when}  {', '.join(d.reasons)}"))
    c.out(f"{'would forget' if dry_run else 'forgot'} {len(res.removed)} snapshot(s)")
    if res.prune is not None:
        _print_prune(c, res.prune)
    _prune_failed(c, res)


def _prune_failed(c, res: api.ForgetResult) -> None:
    """The prune after a forget that did not run to its end: said, then its error raised (its exit code)."""
    if res.prune_failed is not None:
        if res.removed and not res.dry_run:
            c.err(f"vault: forgot {len(res.removed)} snapshot(s), but the prune did not run to its end (run "
                  "'vault prune' later):")
        raise res.prune_failed


def _quiet(_msg: str) -> None:
    pass


@cli.command()
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be deleted and repacked; change nothing.")
@_max_unused
@global_options
def prune(dry_run: bool, max_unused: float) -> None:
    """Delete data that no snapshot references and repack mostly-empty packs (exclusive lock).

    Example: vault --repo /srv/backup prune --max-unused 5%
    """
    c = get_ctx()
    rep, requests = api.prune_repository(c.settings, c.password_fn(), PruneOptions(max_unused=max_unused,
                                                                                   dry_run=dry_run),
                                         log=c.err if c.verbose else _quiet)
    if c.json:
        c.emit_json({**rep.to_json(), **requests})
        return
    _print_prune(c, rep)


@cli.command()
@click.argument("snapshots", nargs=-1)
@click.option("--add", "add", multiple=True, metavar="TAG", help="Add TAG (repeatable; a,b: two tags).")
@click.option("--remove", "remove", multiple=True, metavar="TAG", help="Remove TAG (repeatable).")
@click.option("--set", "set_", multiple=True, metavar="TAG", help="Replace the tags by these (repeatable; "
              "--set '' removes every tag).")
@click.option("--host", "hosts", multiple=True, help="Only snapshots of this host (with SNAPSHOTS: for latest).")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag (a,b = both; with SNAPSHOTS: for "
              "latest).")
@click.option("--path", "paths", multiple=True, help="Only snapshots of this path (with SNAPSHOTS: for latest).")
@global_options
def tag(snapshots: tuple[str, ...], add: tuple[str, ...], remove: tuple[str, ...], set_: tuple[str, ...],
        hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...]) -> None:
    """Change the tags of SNAPSHOTS (ids, prefixes or 'latest'; none: every snapshot --host, --tag and --path
    select, as restic's tag): each is written anew with its new tags (a new id) and the old manifest is let go
    (exclusive lock).

    Example: vault --repo /srv/backup tag --add release 1a2b3c4d
    """
    c = get_ctx()
    if not (add or remove or set_):
        raise UsageError("say what to change: --add TAG, --remove TAG or --set TAG")
    if set_ and (add or remove):
        raise UsageError("--set replaces the tags: give it alone, not with --add or --remove")
    res = api.tag(c.settings, c.password_fn(), list(snapshots), split_tags(add, "--add"),
                  split_tags(remove, "--remove"), split_tags(set_, "--set") if set_ else None,
                  api.SnapshotFilter(texts(hosts), texts(tags), list(paths)))
    if c.json:
        c.emit_json(res.to_json())
        return
    for old, new, now in res.changed:
        c.out(f"snapshot {old[:8]} -> {new[:8]}: tags {printable(','.join(now)) or '(none)'}")
    c.out(f"{len(res.changed)} snapshot(s) changed, {len(res.unchanged)} already so")


@cli.command()
@click.argument("snapshots", nargs=-1)
@click.option("--to", "to_url", required=True, metavar="URL", help="The destination repository (initialised; "
              "ideally with --copy-chunker-params-from this one).")
@click.option("--to-password-file", type=click.Path(dir_okay=False),
              help="Password file of the destination (else VAULT_TO_PASSWORD_FILE / _COMMAND / VAULT_TO_PASSWORD, "
                   "else this repository's password).")
@click.option("--to-password-command", metavar="CMD", help="Command printing the destination's password.")
@click.option("--host", "hosts", multiple=True, help="Only snapshots of this host.")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag (a,b = both).")
@click.option("--path", "paths", multiple=True, help="Only snapshots of this path.")
@global_options
def copy(snapshots, to_url, to_password_file, to_password_command, hosts, tags, paths) -> None:
    """Copy snapshots (default: all) into a second repository with its own keys. Snapshots already there are
    skipped and only blocks the destination lacks are transferred: a nightly copy moves only new data.

    Example: vault --repo /srv/backup copy --to s3://offsite-bucket/vault
    """
    c = get_ctx()
    if not to_url:  # (an unset variable: it named this very repository, or none)
        raise UsageError("--to is empty: name the destination repository")
    to = api.second_settings(c.settings, to_url)
    rep, requests = api.copy(c.settings, c.password_fn(), list(snapshots), to,
                             lambda: c.second_password("TO", to_password_file, to_password_command),
                             api.SnapshotFilter(texts(hosts), texts(tags), list(paths)),
                             log=c.err if c.verbose else _quiet)
    if c.json:
        c.emit_json({**rep.to_json(), "requests": requests})
        return
    for s, d in rep.copied:
        c.out(f"copied snapshot {s[:8]} -> {d[:8]}")
    c.out(f"copied {len(rep.copied)} snapshot(s), {len(rep.skipped)} already there; stored {rep.blocks_stored} "
          f"new blocks ({human_bytes(rep.bytes_stored)}), read {rep.blocks_read} blocks ({human_bytes(rep.bytes_read)})")
    if rep.tags_differ and not c.quiet:
        there = " ".join(d[:8] for _, d in rep.tags_differ[:10]) + (" ..." if len(rep.tags_differ) > 10 else "")
        c.err(f"vault: warning: {len(rep.tags_differ)} snapshot(s) already there have other tags there (retagged "
              "since they were copied; copy does not change them): retag them there, by their ids there: "
              f"vault --repo {to_url} tag ... {there}")


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
    return get_new_password(file, terminal_prompt())


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
              + ("  DAMAGED" if k["damaged"] else "")
              + (f"  not usable here: {k['unsupported']}" if k.get("unsupported") else ""))


def _kdf_options(f):
    """--kdf, --kdf-memory, --kdf-iterations of a new key slot: by default those of the slot in use."""
    f = click.option("--kdf-iterations", type=click.IntRange(1, 100), default=None,
                     help="Argon2id time cost of the new slot [default: the slot in use's, else 4].")(f)
    f = click.option("--kdf-memory", type=click.IntRange(1, 1024), default=None, metavar="MiB",
                     help="Argon2id memory cost of the new slot [default: the slot in use's, else 32].")(f)
    return click.option("--kdf", type=click.Choice(["argon2id", "scrypt"]), default=None,
                        help="KDF of the new slot [default: the slot in use's].")(f)


def _kdf(kdf: str | None, memory: int | None, iterations: int | None) -> dict:
    """The KDF choices given (``api.new_slot_kdf`` fills in the rest from the slot in use)."""
    if kdf == "scrypt" and (memory is not None or iterations is not None):
        given = [n for n, v in (("--kdf-memory", memory), ("--kdf-iterations", iterations)) if v is not None]
        raise UsageError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to --kdf argon2id only")
    return {"name": kdf, "memory_kib": None if memory is None else memory * 1024, "iterations": iterations}


@key.command("add")
@click.option("--new-password-file", type=click.Path(dir_okay=False), help="Read the new password from FILE "
              "[env: VAULT_NEW_PASSWORD_FILE, VAULT_NEW_PASSWORD].")
@_kdf_options
@global_options
def key_add(new_password_file: str | None, kdf: str | None, kdf_memory: int | None,
            kdf_iterations: int | None) -> None:
    """Add a key slot for another password. Example: vault key add --new-password-file pw2"""
    c = get_ctx()
    choice = _kdf(kdf, kdf_memory, kdf_iterations)
    with api.session(c.settings, c.password_fn(), sync=False) as sess:
        kid = api.key_add(sess, _new_password(new_password_file), api.new_slot_kdf(sess, **choice))
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
@click.option("--new-password-file", type=click.Path(dir_okay=False), help="Read the new password from FILE "
              "[env: VAULT_NEW_PASSWORD_FILE, VAULT_NEW_PASSWORD].")
@_kdf_options
@global_options
def key_passwd(new_password_file: str | None, kdf: str | None, kdf_memory: int | None,
               kdf_iterations: int | None) -> None:
    """Change the password of the key slot in use. Example: vault key passwd --new-password-file pw2"""
    c = get_ctx()
    choice = _kdf(kdf, kdf_memory, kdf_iterations)
    old = c.password()
    with api.session(c.settings, lambda: old, lock="exclusive", operation="key passwd", sync=False) as sess:
        kid = api.key_passwd(sess, _new_password(new_password_file), api.new_slot_kdf(sess, **choice),
                             old_password=old)
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
            c.err(printable(f"warning: {p}"))


@cli.command()
@click.argument("what", type=click.Choice(["all", "index", "snapshots"]), default="all", metavar="[WHAT]")
@click.option("--read-data", is_flag=True, help="Read every pack whole: find damaged bytes, not only damaged "
              "headers (implied by --from-repo).")
@click.option("--from-repo", metavar="URL", help="Heal lost or damaged blocks from this second repository "
              "(e.g. made with 'vault copy').")
@click.option("--from-password-file", type=click.Path(dir_okay=False), help="Password file of --from-repo "
              "(else VAULT_FROM_PASSWORD_FILE / _COMMAND / VAULT_FROM_PASSWORD, else this repository's).")
@click.option("--dry-run", "-n", is_flag=True, help="Report what would be repaired; change nothing.")
@global_options
def repair(what: str, read_data: bool, from_repo: str | None, from_password_file: str | None,
           dry_run: bool) -> int:
    """Repair the repository (WHAT: all, index or snapshots; default all): rebuild the index from the packs (salvaging what still authenticates in damaged
    packs), heal lost blocks from a second repository, and write new snapshots without the files whose data is
    lost (tagged 'repaired'; the old ones stay until forgotten). Ends with a verify: exit 0 when clean, 20 if
    damage remains.

    Example: vault --repo /srv/backup repair --from-repo s3://offsite-bucket/vault
    """
    c = get_ctx()
    other = None
    if from_repo == "":  # (an unset variable: a plain repair ran instead, healing nothing)
        raise UsageError("--from-repo is empty: name the repository to heal from")
    if from_repo:
        read_data = True
        other = (api.second_settings(c.settings, from_repo),
                 lambda: c.second_password("FROM", from_password_file, None))
    rep, verify_report, requests = api.repair(c.settings, c.password_fn(), what, read_data, other, dry_run,
                                              log=c.err if c.verbose else _quiet)
    ok = verify_report is None or verify_report.ok
    if c.json:
        c.emit_json({**rep.to_json(), "verify": None if verify_report is None else {
            "ok": verify_report.ok, "damage": [d.to_json() for d in verify_report.damage]}, **requests})
    else:
        verb = "would " if dry_run else ""
        c.out(f"repair{' (dry run: nothing changed)' if dry_run else ''}: {rep.packs_checked} packs checked, "
              f"{len(rep.packs_damaged)} damaged ({rep.blocks_salvaged} blocks {'to salvage' if dry_run else 'salvaged'}, "
              f"{rep.blocks_lost} lost), {rep.packs_missing} missing"
              + ("; the index is intact and was left as it is" if not rep.index_rewritten else "")
              + (f"; {rep.blocks_healed} blocks and {rep.trees_healed} trees {'would be ' if dry_run else ''}healed "
                 "from the second repository" if from_repo else ""))
        if rep.trees_from_cache:
            c.out(f"{rep.trees_from_cache} lost directory listing(s) {'would be ' if dry_run else ''}stored again "
                  "from this machine's catalog")
        if dry_run and not (read_data or from_repo):  # (a real run says so after its verify)
            c.out("(packs were not read: damage inside a pack is not seen; add --read-data)")
        for s in rep.snapshots_rewritten:
            if s.get("restored_from_catalog"):
                c.out(f"would write snapshot {s['old'][:8]} again" if dry_run else
                      f"wrote snapshot {s['old'][:8]} again as {s['new'][:8]}")
                c.out(f"  (its manifest was {s['manifest']}) from this machine's catalog: a new id, same time, host, "
                      "paths, tags and directory tree")
                continue
            if s.get("healed_from_copy") and dry_run:
                c.out(f"would restore snapshot {s['old'][:8]} from the copy's {s['healed_from_copy'][:8]}")
                continue
            if s.get("healed_from_copy"):
                why = s.get("manifest") or "unreadable"  # (unreadable, or missing: deleted without a forget)
                c.out(f"restored snapshot {s['old'][:8]} (manifest {why}) from the copy's "
                      f"{s['healed_from_copy'][:8]} as {s['new'][:8]}: a new id, same time, host, paths and tags")
                continue
            if s["old"] is None:  # a tree no manifest names any more
                c.out(f"{verb}recover an orphan tree as snapshot {(s['new'] or '-')[:8]} (tag 'recovered')")
            elif s["new"] is None and s.get("manifest"):
                c.out(f"{verb}remove snapshot {s['old'][:8]}: its manifest is {s['manifest']}")
            else:
                c.out(f"{verb}rewrite snapshot {s['old'][:8]} -> {(s['new'] or '-')[:8]}: {s['files_dropped']} "
                      "file(s) dropped")
        for f in rep.files_dropped:
            c.err(printable(f"  lost: {f}"))
        for w in rep.warnings:
            c.err(printable(f"warning: {w}"))
        if rep.still_missing and not dry_run:
            c.err(f"warning: {rep.still_missing} block(s) that snapshots reference are lost"
                  + (": the second repository could not supply them (it lacks them, or holds them damaged too: "
                     f"check it with 'vault --repo {printable(from_repo)} verify --read-data')" if from_repo else ""))
        if verify_report is not None:
            for d in verify_report.damage:
                c.err(printable(f"damaged: {d.object}: {d.problem}"))
            scope = "" if read_data or from_repo else " (structure only: add --read-data to read every pack)"
            lost = (f" -- but {len(rep.files_dropped)} file(s) could not be recovered: dropped from the rewritten "
                    "snapshots (listed above)") if ok and rep.files_dropped else ""
            c.out(f"verify after repair{scope}: " + ("no errors found" + lost if ok else
                                                     f"{len(verify_report.damage)} problem(s)"))
    return 0 if ok else DamageFound.exit_code
