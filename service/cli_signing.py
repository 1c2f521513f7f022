"""modelctl's commands for signed versions: make a key pair, sign published versions,
verify a store's versions against trusted public keys (see service.store.signing)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from service.cli_fleet import open_store, store_location_option
from service.config import Settings
from service.errors import SignatureRefused
from service.store import ModelStore, parse_ref, signing
from service.store.remote import RemoteStore

signing_key_option = click.option(
    "--signing-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Sign the new version with this PEM private key (default: the signing_key "
    "setting, MODEL_SERVICE_SIGNING_KEY; none: published unsigned).",
)


def register(cli: click.Group) -> None:
    for command in (signing_group, sign, verify):
        cli.add_command(command)


@click.group("signing")
def signing_group() -> None:
    """Keys for signed versions."""


@signing_group.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The directory for the two PEM files (created if missing).",
)
def keygen(out_dir: Path) -> None:
    """Make an EC P-256 key pair: signing-key.pem (private, mode 0600) signs versions,
    signing-key.pub.pem goes to every server that must trust them."""
    private, public = signing.generate_key_pair(out_dir)
    click.echo(
        f"private key: {private} (keep it with the publisher; never on a server)\n"
        f"public key:  {public} (key id {signing.key_id(public)})\n"
        f"publish signed: MODEL_SERVICE_SIGNING_KEY={private}\n"
        f"serve trusting it: MODEL_SERVICE_TRUSTED_SIGNING_KEYS={public}"
    )


@click.command()
@click.argument("refs", nargs=-1)
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The PEM private key (default: the signing_key setting).",
)
@click.option(
    "--unsigned",
    "all_unsigned",
    is_flag=True,
    help="Sign every version of the store that has no signature yet.",
)
@store_location_option
def sign(refs: tuple[str, ...], key_path: Path | None, all_unsigned: bool, store_location: str):
    """Sign published versions (NAME@VERSION or NAME@ALIAS; NAME: its production version),
    e.g. those published before signing was turned on, here or on a fleet's store (signed
    here, the signature placed there). A pickle must match its sha256; beyond that, what
    the store holds now is signed: check it first if others may have written the store."""
    if not refs and not all_unsigned:
        raise click.UsageError("name versions to sign, or --unsigned")
    store = open_store(store_location, sign=True, signing_key=key_path)
    if store.signing_key is None:
        raise click.ClickException("signing needs --key or the signing_key setting")
    targets = [(ref.name, store.resolve(ref)) for ref in map(parse_ref, refs)]
    if all_unsigned:
        targets += _unsigned_versions(store)
    key = signing.private_key_id(store.signing_key)
    for name, version in targets:
        store.sign(name, version)
        click.echo(f"signed {name}@{version} (key {key})")
    if not targets:
        click.echo("every version is signed already")


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--trusted",
    "trusted",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A trusted PEM public key (repeatable; default: the trusted_signing_keys setting).",
)
@store_location_option
def verify(refs: tuple[str, ...], trusted: tuple[Path, ...], store_location: str) -> None:
    """Verify versions' signatures against trusted public keys, without unpickling them:
    NAME (every version), NAME@VERSION or NAME@ALIAS. Exits 1 if any is refused."""
    keys = signing.check_trusted_keys(trusted or Settings.load().trusted_signing_keys)
    if not keys:
        raise click.ClickException("no trusted key: give --trusted PUB or trusted_signing_keys")
    store = open_store(store_location)
    refused = 0
    for text in refs:
        ref = parse_ref(text)
        versions = store.versions(ref.name) if "@" not in text else [store.resolve(ref)]
        for version in versions:
            try:
                signer = _verify_one(store, keys, ref.name, version)
            except SignatureRefused as exc:
                refused += 1
                click.echo(f"REFUSED {ref.name}@{version}: {exc.reason}: {exc.message}")
            else:
                click.echo(f"ok {ref.name}@{version} (signed by key {signer})")
    if refused:
        raise click.ClickException(f"{refused} version(s) refused")


def _unsigned_versions(store: ModelStore | RemoteStore) -> list[tuple[str, int]]:
    if isinstance(store, RemoteStore):
        models = store.manifest()["models"]
        return [
            (name, int(version))
            for name, entry in sorted(models.items())
            for version in sorted(entry["versions"], key=int)
            if version not in entry.get("signatures", {})
        ]
    return [
        (name, version)
        for name in store.names()
        for version in store.versions(name)
        if not (store.layout.version_dir(name, version) / signing.SIGNATURE_FILE).is_file()
    ]


def _verify_one(
    store: ModelStore | RemoteStore, keys: tuple[Path, ...], name: str, version: int
) -> str:
    if isinstance(store, ModelStore):
        directory = store.layout.version_dir(name, version)
        verified = signing.verify_version(directory, keys, name=name, version=version)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="model-verify-"))
        try:
            store.export_version(name, version, scratch)
            verified = signing.verify_version(scratch, keys, name=name, version=version)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    assert verified is not None  # keys are given
    return verified.key_id
