"""modelctl keys: create, list and revoke API keys in a store's key file (a directory, or a
fleet's authoritative store over SSH, from which every host's mirror copies it)."""

from __future__ import annotations

import datetime as dt

import click

from service.cli_fleet import store_location_option
from service.errors import ServiceError
from service.keys import SCOPES, KeyRing, KeyUsage, iso
from service.store.remote import RemoteStore, is_remote


def register(cli: click.Group) -> None:
    cli.add_command(keys)


def keyring(store_location: str):
    if is_remote(store_location):
        from service.config import Settings

        return RemoteStore.from_settings(Settings.load(), url=store_location).keyring()
    return KeyRing(store_location)


@click.group()
def keys() -> None:
    """API keys: each grants scopes (predict, feedback, read, admin); the store keeps only
    their sha256 digests, and the service rereads them within seconds of a change."""


@keys.command()
@click.argument("name")
@click.option(
    "--scopes",
    required=True,
    help=f"Comma-separated, of {', '.join(SCOPES)}.",
)
@click.option(
    "--expires",
    help="A date (2027-01-01, UTC), an ISO-8601 time or a duration (30d, 12h); default: never.",
)
@store_location_option
def create(name: str, scopes: str, expires: str | None, store_location: str) -> None:
    """Create key NAME and print it, once: it is stored nowhere, only its digest is."""
    try:
        token = keyring(store_location).create(name, scopes.split(","), expires)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(token)
    click.echo(
        f"key {name!r} created in {store_location}; it is shown only now: keep it safe", err=True
    )


@keys.command()
@click.argument("name")
@click.option("--scopes", required=True, help=f"Comma-separated, of {', '.join(SCOPES)}.")
@click.option("--sha256", "digest", required=True, help="The key's sha256 hex digest.")
@click.option("--expires", help="As for create.")
@store_location_option
def add(name: str, scopes: str, digest: str, expires: str | None, store_location: str) -> None:
    """Record key NAME by its digest (a key made elsewhere, e.g. by a deploy's inventory);
    the same key again changes nothing. Prints 'added NAME' or 'unchanged NAME'."""
    try:
        added = keyring(store_location).add(name, scopes.split(","), digest.lower(), expires)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"{'added' if added else 'unchanged'} {name}")


@keys.command("list")
@store_location_option
def list_keys(store_location: str) -> None:
    """Name, scopes, created, expires, and last use on this host (where its monitoring state
    directory says; '-' where it does not know)."""
    from service.config import Settings

    try:
        found = keyring(store_location).list()
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    used = KeyUsage(Settings.load().state_dir).last_used()
    rows = [("NAME", "SCOPES", "CREATED", "EXPIRES", "LAST USED (this host)")]
    for key in found:
        expires = key.expires or "never"
        if key.expires and key.expired():
            expires += " (expired)"
        last = used.get(key.name)
        rows.append(
            (
                key.name,
                ",".join(s for s in SCOPES if s in key.scopes),
                key.created,
                expires,
                _when(last) if last is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@keys.command()
@click.argument("name")
@store_location_option
def revoke(name: str, store_location: str) -> None:
    """Remove key NAME: refused everywhere within seconds (a fleet: within its sync)."""
    try:
        keyring(store_location).revoke(name)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"key {name!r} revoked in {store_location}")


def _when(timestamp: float) -> str:
    return iso(dt.datetime.fromtimestamp(timestamp, dt.UTC).replace(microsecond=0))
