"""``biox keys``: each participant's signing and sealing keys (docs/security.md, "Keys")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from biox.cli.common import Participant, console, settings
from biox.trust.sealing import (
    Trust,
    export_keys,
    fingerprint,
    import_keys,
    new_key,
    trust_path,
)

app = typer.Typer(
    help="Signing and sealing keys: make, list, rotate, revoke, exchange.", no_args_is_help=True
)


@app.command("new")
def keys_new(participant: Participant = typer.Option(..., "--participant", "-p")) -> None:
    """Make a new key pair for a participant (a rotation, when it already has one).

    The private halves go to BIOX_KEYS_DIR/<code>/ (owner-only); the public halves to
    BIOX_KEYS_DIR/trust.toml, which the partners must receive out of band before the new
    key signs anything they are to accept.
    """
    code = getattr(participant, "value", participant)
    key = new_key(settings().keys(), code)
    console.print(f"{key.kid}: new signing and sealing key for {code}")
    console.print(f"[dim]public halves in {trust_path(settings().keys())}[/]")


@app.command("list")
def keys_list() -> None:
    """Every public key in the trust file, newest last per participant."""
    trust = Trust.load(trust_path(settings().keys()))
    table = Table("key id", "participant", "created", "status", "signing key (Ed25519)")
    for k in sorted(trust.keys.values(), key=lambda k: (k.code, k.created, k.kid)):
        newest = trust.newest(k.code)
        status = "revoked" if k.revoked else "current" if newest and newest.kid == k.kid else "old"
        table.add_row(k.kid, k.code, k.created, status, bytes(k.verify).hex()[:16] + "…")
    console.print(table)


@app.command("revoke")
def keys_revoke(kid: str = typer.Argument(..., help="the key id to stop accepting")) -> None:
    """Stop accepting signatures by a key and sealing to it (a compromised or retired key)."""
    path = trust_path(settings().keys())
    trust = Trust.load(path)
    if kid not in trust.keys:
        console.print(f"[red]no key {kid!r} in {path}[/]")
        raise typer.Exit(1)
    trust.keys[kid] = replace(trust.keys[kid], revoked=True)
    path.write_text(trust.dump())
    console.print(f"{kid}: revoked")


@app.command("export")
def keys_export(
    participant: Participant = typer.Option(..., "--participant", "-p"),
    out: Path = typer.Argument(..., help="the file to send the partners"),
) -> None:
    """A participant's public keys (its revocations included), for its partners, with
    the fingerprint to read them over the telephone."""
    code = getattr(participant, "value", participant)
    text = export_keys(Trust.load(trust_path(settings().keys())), code)
    out.write_text(text)
    console.print(f"wrote {out}; fingerprint [bold]{fingerprint(text)}[/]")


@app.command("import")
def keys_import(
    file: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        readable=True,
        help="what the partner exported (biox keys export)",
    ),
    source: str = typer.Option(..., "--from", help="the partner it came from"),
    expected: str = typer.Option(..., "--fingerprint", help="as the partner read it out"),
) -> None:
    """Add a partner's public keys: only that partner's, only with the fingerprint it
    read out, never changing a key already held. Running workers see them within a
    second."""
    path = trust_path(settings().keys())
    trust = Trust.load(path)
    try:
        added = import_keys(trust, file.read_text(), source, expected)
    except ValueError as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(2) from exc
    path.write_text(trust.dump())
    console.print(f"{source}: {len(added)} new key(s) {', '.join(added)}; revocations taken")
