"""modelctl's commands for a fleet: the authoritative store, its mirrors, backups, the
rolling upgrade's gate, and the deploy files an installed package carries."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from service.config import Settings
from service.files import replacing
from service.store import ModelStore
from service.store.remote import RemoteStore, is_remote

# Where a store is given, it may be a directory or the authoritative store of a fleet.
store_location_option = click.option(
    "--store",
    "store_location",
    envvar="MODEL_SERVICE_STORE",
    default="model_store",
    show_default=True,
    help="The model store: a directory, or ssh://user@host[:port]/path for a fleet's "
    "authoritative store (key and known_hosts from MODEL_SERVICE_STORE_REMOTE_KEY and "
    "MODEL_SERVICE_STORE_REMOTE_KNOWN_HOSTS).",
)


def open_store(
    location: str | Path, *, sign: bool = False, signing_key: str | Path | None = None
) -> ModelStore | RemoteStore:
    """A local store trusts the settings' signing keys; with ``sign`` it signs what it
    publishes with ``signing_key`` (default: the signing_key setting)."""
    try:
        settings = Settings.load()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if signing_key:
        settings = dataclasses.replace(settings, signing_key=str(signing_key))
    if is_remote(location):
        return RemoteStore.from_settings(settings, url=str(location), sign=sign)
    return ModelStore.from_settings(settings, location, sign=sign)


def deploy_file(name: str) -> Path:
    """The path of one of the deploy files (gunicorn.conf.py, nginx.conf) as installed."""
    from service.localstack import DEPLOY_DIR

    path = DEPLOY_DIR / name
    if "/" in name or not path.is_file():
        raise click.ClickException(f"no deploy file named {name!r} in this installation")
    return path


def register(cli: click.Group) -> None:
    for command in (deploy_path, store_sync, gate, backup, restore):
        cli.add_command(command)


@click.command("deploy-path")
@click.argument("name")
def deploy_path(name: str) -> None:
    """Print the installed path of a deploy file (gunicorn.conf.py, nginx.conf)."""
    click.echo(deploy_file(name))


@click.command("store-sync")
@click.option("--once", is_flag=True, help="One pass, then exit (0 when in step).")
def store_sync(once: bool) -> None:
    """Mirror the authoritative store (setting store_remote) into this host's store,
    verifying each version before it may be served."""
    from service.runtime.model import LoadedModel
    from service.store.mirror import StoreMirror

    settings = Settings.load()
    if not settings.store_remote:
        raise click.ClickException("store-sync needs the setting store_remote (ssh://…)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    remote = RemoteStore.from_settings(settings, multiplex=not once)
    mirror = StoreMirror(remote, ModelStore.from_settings(settings), verify=LoadedModel)
    if once:
        summary = mirror.sync_once()
        click.echo(json.dumps(summary))
        if summary["problems"]:
            raise click.ClickException("; ".join(summary["problems"]))
        return
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        mirror.run(settings.store_sync_interval, stop)
    finally:
        remote.close()


@click.command()
@click.argument("url")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for /readyz.")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A file holding a key with scopes read and predict, where those need one.",
)
def gate(url: str, timeout: float, key_file: Path | None) -> None:
    """Exit 0 when URL is ready and every served model answers its golden example as
    recorded at training; else say why and exit 1 (the rolling upgrade's gate)."""
    key = key_file.read_text().strip() if key_file else None
    problems = check_gate(url.rstrip("/"), timeout, key=key)
    if problems:
        raise click.ClickException(f"{url} fails its gate: " + "; ".join(problems))
    click.echo(f"{url}: ready, every served model answers its golden example")


def check_gate(url: str, timeout: float, *, key: str | None = None) -> list[str]:
    import requests

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            answer = requests.get(f"{url}/readyz", timeout=5)
            if answer.status_code == 200:
                break
            last = f"/readyz answered {answer.status_code}: {answer.text.strip()[:300]}"
        except requests.RequestException as exc:
            last = f"/readyz: {exc.__class__.__name__}"
        if time.monotonic() > deadline:
            return [f"not ready after {timeout:g}s ({last})"]
        time.sleep(0.5)
    problems = []
    listing = requests.get(f"{url}/v1/models", headers=headers, timeout=10)
    if listing.status_code != 200:
        return [f"/v1/models answered {listing.status_code}: {listing.text.strip()[:300]}"]
    names = [m["name"] for m in listing.json()["models"]]
    if not names:
        problems.append("it serves no model")
    for name in names:
        problem = _golden_problem(requests, url, name, headers)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def _golden_problem(requests: Any, url: str, name: str, headers: dict[str, str]) -> str | None:
    answer = requests.get(f"{url}/v1/models/{name}", headers=headers, timeout=10)
    meta = answer.json().get("metadata") or {}
    golden = meta.get("golden")
    if not golden:
        return "its metadata has no golden example"
    answer = requests.post(
        f"{url}/v1/models/{name}/predict",
        json={"instances": golden["instances"]},
        headers=headers,
        timeout=30,
    )
    if answer.status_code != 200:
        return f"the golden example answered {answer.status_code}: {answer.text.strip()[:300]}"
    got, expected = answer.json()["predictions"], golden["predictions"]
    tolerance = golden.get("tolerance") or {}
    rtol, atol = tolerance.get("rtol", 1e-5), tolerance.get("atol", 1e-8)
    if meta.get("task") == "regression":
        same = len(got) == len(expected) and all(
            math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
            for a, b in zip(got, expected, strict=True)
        )
    else:
        same = got == expected
    return None if same else f"golden example gave {got}, expected {expected}"


@click.command()
@click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
@store_location_option
@click.option(
    "--no-keys",
    is_flag=True,
    help="Leave out the key file (the API keys' digests), e.g. for a store that seeds another.",
)
def backup(destination: Path, store_location: str, no_keys: bool) -> None:
    """Write a consistent archive of the whole store (every version, the aliases and their
    history, the key file) with a sha256 manifest to DESTINATION (.tar.gz); safe while
    others publish."""
    from service.store import archive

    destination = destination.resolve()
    with replacing(destination) as out:
        store = open_store(store_location)
        if isinstance(store, RemoteStore):
            if no_keys:
                raise click.UsageError("--no-keys is for a store on this machine")
            store.backup(out)
        else:
            archive.write_backup(store, out, keys=not no_keys)
    digest = hashlib.sha256(destination.read_bytes()).hexdigest()
    click.echo(f"backed up {store_location} to {destination} (sha256 {digest})")


@click.command()
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@store_location_option
def restore(source: Path, store_location: str) -> None:
    """Replace the store's contents with an archive's, after verifying all of it."""
    from service.store import archive

    store = open_store(store_location)
    with open(source, "rb") as stream:
        if isinstance(store, RemoteStore):
            summary = store.restore(stream)
        else:
            summary = archive.restore(store, stream)
    removed = f"; removed {', '.join(summary['removed'])}" if summary["removed"] else ""
    keys = {
        "restored": "; the key file put back",
        "kept": "; the store's own key file kept (a restore brings back no revoked key)",
    }.get(summary.get("keys") or "", "")
    running = summary.get("experiments") or {}
    experiments = (
        "; experiments running: " + ", ".join(f"{n} ({i})" for n, i in running.items())
        if running
        else ""
    )
    stopped = summary.get("experiments_stopped") or []
    if stopped:
        experiments += f"; experiment stopped (the archive has none): {', '.join(stopped)}"
    click.echo(
        f"restored {len(summary['models'])} models ({summary['versions']} versions) "
        f"into {store_location}{removed}{keys}{experiments}"
    )
