"""modelctl experiment: start, show and stop the experiment of a model (a directory store,
or a fleet's authoritative store over SSH, from which every host's mirror copies it)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click

from service.cli_fleet import open_store, store_location_option
from service.config import Settings
from service.errors import ServiceError
from service.store import experiment_control

# What a start entry of the history repeats of the experiment: not shown again.
_ENTRY_SHOWN_ELSEWHERE = frozenset(
    {"at", "action", "id", "reason", "kind", "started_at", "variants"}
    | {"key_header", "key_field", "shadow", "alpha", "min_effect"}
)


def register(cli: click.Group) -> None:
    cli.add_command(experiment_group)


@click.group("experiment")
def experiment_group() -> None:
    """Split a model's requests between versions or aliases (sticky per client when a
    client key is named), optionally running a share on a shadow version too."""


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A service error ends the command with its message, not a traceback."""
    try:
        yield
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None


def load_settings() -> Settings:
    """The settings, or the command ends saying what in them is wrong."""
    try:
        return Settings.load()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@experiment_group.command()
@click.argument("name")
@click.option(
    "--variants",
    help="NAME=WEIGHT,...: versions or aliases and their percent of the requests, adding up "
    "to 100 (e.g. production=90,staging=10). Default with --shadow: the default alias at 100.",
)
@click.option("--key-header", help="Assign sticky by this request header (e.g. X-Client-ID).")
@click.option("--key-field", help="... or by this field of the request body (e.g. client_id).")
@click.option("--shadow", "shadow_target", metavar="TARGET", help="Also run a share on this.")
@click.option(
    "--shadow-share",
    type=float,
    help=f"The share of requests the shadow also runs [default: "
    f"{experiment_control.DEFAULT_SHADOW_SHARE:g}].",
)
@click.option("--alpha", type=float, help="The report's significance level [default: 0.05].")
@click.option(
    "--min-effect",
    type=float,
    help="The smallest difference the report is sized to detect [default: 0.02].",
)
@click.option("--reason", default="", help="Recorded in the experiment's history.")
@store_location_option
def start(
    name: str,
    variants: str | None,
    key_header: str | None,
    key_field: str | None,
    shadow_target: str | None,
    shadow_share: float | None,
    alpha: float | None,
    min_effect: float | None,
    reason: str,
    store_location: str,
) -> None:
    """Start an experiment on NAME; refused while one runs, or when a variant is a version
    or an alias NAME lacks."""
    if shadow_share is not None and shadow_target is None:
        raise click.UsageError("--shadow-share needs --shadow TARGET")
    if variants is None and shadow_target is None:
        raise click.UsageError("give --variants (e.g. production=90,staging=10), or --shadow")
    body = {
        "variants": variants,
        "key_header": key_header,
        "key_field": key_field,
        "shadow": None
        if shadow_target is None
        else {"target": shadow_target, "share": shadow_share},
        "alpha": alpha,
        "min_effect": min_effect,
        "reason": reason,
    }
    with one_line_errors():
        arguments, options = experiment_control.start_arguments(
            body, default_alias=load_settings().default_alias
        )
        store = open_store(store_location)
        started = store.start_experiment(name, arguments, **options)
        status = experiment_control.status(store, name, history=0)
    click.echo(f"{name}: started experiment {started.id}")
    click.echo(status_text(status, headline=False))


@experiment_group.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--history",
    default=experiment_control.HISTORY_SHOWN,
    show_default=True,
    type=click.IntRange(0),
    help="History lines to show.",
)
@store_location_option
def status(name: str, as_json: bool, history: int, store_location: str) -> None:
    """The experiment running on NAME: variants with their weight and the version each
    serves now, client key, shadow; and the last lines of its history."""
    with one_line_errors():
        answer = experiment_control.status(open_store(store_location), name, history=history)
    click.echo(json.dumps(answer, indent=2) if as_json else status_text(answer))


@experiment_group.command()
@click.argument("name")
@click.option("--reason", default="", help="Recorded in the experiment's history.")
@store_location_option
def stop(name: str, reason: str, store_location: str) -> None:
    """Stop the experiment running on NAME: every request goes to the default alias again."""
    with one_line_errors():
        stopped = open_store(store_location).stop_experiment(name, reason=reason)
    alias = load_settings().default_alias
    click.echo(f"{name}: stopped experiment {stopped.id}; requests go to {alias} again")


def status_text(status: dict[str, Any], *, headline: bool = True) -> str:
    name, experiment = status["model"], status["experiment"]
    lines = []
    if experiment is None:
        lines.append(f"{name}: no experiment")
    else:
        if headline:
            lines.append(
                f"{name}: experiment {experiment['id']} ({experiment['kind']}), "
                f"started {experiment['started_at']}"
            )
        width = max(len(v["name"]) for v in experiment["variants"])
        for index, variant in enumerate(experiment["variants"]):
            label = "variants:" if index == 0 else ""
            lines.append(
                f"  {label:<10} {variant['name']:<{width}}  {variant['weight']:>5g}%  "
                f"-> {_version_text(variant['version'])}"
            )
        keys = [
            f"header {experiment['key_header']}" if experiment["key_header"] else "",
            f"body field {experiment['key_field']}" if experiment["key_field"] else "",
        ]
        key_text = ", else ".join(k for k in keys if k)
        lines.append(f"  {'key:':<10} " + (key_text or "none: each request drawn by weight"))
        shadow = experiment["shadow"]
        if shadow is not None:
            lines.append(
                f"  {'shadow:':<10} {shadow['target']} on {shadow['share'] * 100:g}% of the "
                f"requests -> {_version_text(shadow['version'])}"
            )
        lines.append(
            f"  {'report:':<10} alpha {experiment['alpha']:g}, "
            f"min effect {experiment['min_effect']:g}"
        )
    if status["history"]:
        lines.append("history (newest last):")
        lines += [
            f"  {_entry_text(entry) if isinstance(entry, dict) else entry}"
            for entry in status["history"]
        ]
    return "\n".join(lines)


def _version_text(version: int | None) -> str:
    return "no such version now" if version is None else f"version {version}"


def _entry_text(entry: dict[str, Any]) -> str:
    text = f"{entry.get('at', '?')}  {entry.get('action', '?'):<8} {entry.get('id', '')}"
    if entry.get("reason"):
        text += f"  ({entry['reason']})"
    extra = {k: v for k, v in entry.items() if k not in _ENTRY_SHOWN_ELSEWHERE}
    if entry.get("action") == "start":
        listed = entry.get("variants")
        listed = listed if isinstance(listed, list) else []
        weights = {v.get("name"): v.get("weight") for v in listed if isinstance(v, dict)}
        extra = {"variants": weights, **extra}
    if extra:
        text += "  " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extra.items())
    return text
