"""`ctnode store check`: reconcile the instance store with the index, as the receiver does at start."""

from __future__ import annotations

from typing import Annotated

import typer

from node.cli.common import ConfigOpt, JsonOpt, console, dump_json, open_database, settings_from
from node.dicom.reconcile import RECONCILE_GRACE_S, reconcile
from node.storage.store import InstanceStore

app = typer.Typer(help="The instance store.", no_args_is_help=True)


@app.command("check")
def store_check(
    config: ConfigOpt = None,
    older_than_s: Annotated[float, typer.Option(
        help="Leave files younger than this alone (a receiver may be committing them).")] = RECONCILE_GRACE_S,
    as_json: JsonOpt = False,
) -> None:
    """Move store files no instance row names into quarantine/orphans (audited); list rows whose file is gone.

    Exits 1 when it found anything.
    """
    settings = settings_from(config)
    result = reconcile(InstanceStore(settings.storage), open_database(settings), older_than_s)
    if as_json:
        dump_json({"orphans": result.orphans, "missing": result.missing})
    else:
        for relative, kept in result.orphans.items():
            console.print(f"orphan {relative} -> {kept}")
        for relative in result.missing:
            console.print(f"[red]missing[/red] {relative}")
        console.print(f"{len(result.orphans)} orphan(s) moved aside, {len(result.missing)} indexed file(s) missing")
    if result.orphans or result.missing:
        raise typer.Exit(1)
