"""modelctl experiment report / conclude: an experiment's figures and verdicts, and ending
it by promoting the variant the evidence favours (through the promotion gate).

The evidence is this host's monitoring state (the ``state_dir`` setting), or with
``--url`` (repeated, one per host) the hosts' admin API, added up over the fleet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from service.cli_experiments import load_settings, one_line_errors
from service.cli_fleet import open_store, store_location_option
from service.experiments import conclusion, evidence, report
from service.store.experiments import Experiment


def register(group: click.Group) -> None:
    """Add the commands to ``modelctl experiment``."""
    for command in (report_command, conclude):
        group.add_command(command)


hosts_option = click.option(
    "--url",
    "urls",
    multiple=True,
    metavar="URL",
    help="A host's base URL (repeat for each host of a fleet): add up the hosts' evidence "
    "through their admin API instead of reading this host's monitoring state.",
)
key_option = click.option(
    "--key",
    envvar="MODEL_SERVICE_KEY",
    help="An admin key for --url (default: MODEL_SERVICE_KEY).",
)


def _report(
    store: Any, name: str, experiment_id: str | None, urls: Sequence[str], key: str | None
) -> tuple[Experiment, dict[str, Any]]:
    experiment = report.find(store, name, experiment_id)
    if urls:
        totals = evidence.remote_totals(urls, key, name, experiment.id)
        shadow = evidence.remote_shadow(urls, key, experiment)
    else:
        settings = load_settings()
        totals = evidence.local_totals(settings, name, experiment.id)
        shadow = evidence.local_shadow(settings, experiment)
    task = report.task_of(store, name, totals)
    return experiment, report.build(experiment, totals, task, shadow)


@click.command("report")
@click.argument("name")
@click.option("--experiment", "experiment_id", help="An ended experiment's id (default: the "
              "running one, else the last one started).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@hosts_option
@key_option
@store_location_option
def report_command(
    name: str,
    experiment_id: str | None,
    as_json: bool,
    urls: tuple[str, ...],
    key: str | None,
    store_location: str,
) -> None:
    """Per variant: requests, error rate, latency, live quality; per comparison with the
    control (the first variant): difference, p-value, significance, sample still needed;
    with a shadow, what its candidate did: runs, drops, errors, agreement or differences."""
    with one_line_errors():
        _, built = _report(open_store(store_location), name, experiment_id, urls, key)
    if as_json:
        click.echo(json.dumps(built, indent=2))
    else:
        click.echo(report.text(built))


@click.command()
@click.argument("name")
@click.option(
    "--winner",
    metavar="VARIANT",
    help="Promote this variant whatever the report says (default: the one significantly "
    "better than the others; refused while nothing is significant).",
)
@click.option("--alias", help="The alias to point at the winner [default: the default alias].")
@click.option("--reason", default="", help="Recorded in the alias and experiment histories.")
@click.option(
    "--force",
    is_flag=True,
    help="Promote even if the winner scores worse on its test set than the alias's current "
    "version (the promotion gate), as modelctl promote --force.",
)
@hosts_option
@key_option
@store_location_option
def conclude(
    name: str,
    winner: str | None,
    alias: str | None,
    reason: str,
    force: bool,
    urls: tuple[str, ...],
    key: str | None,
    store_location: str,
) -> None:
    """End the running experiment of NAME: promote the winner through the promotion gate,
    then stop the experiment, recording the report's numbers in its history."""
    store = open_store(store_location)
    alias = alias or load_settings().default_alias
    with one_line_errors():
        running = store.experiment(name)
        if running is None:
            raise click.ClickException(f"model {name!r} runs no experiment")
        experiment, built = _report(store, name, running.id, urls, key)
        done = conclusion.conclude(
            store, experiment, built, alias=alias, winner=winner, reason=reason, force=force
        )
    if done["promoted"]:
        click.echo(
            f"{name}: {alias} -> {done['version']} (was {done['previous']}); winner "
            f"{done['winner']}; experiment concluded"
        )
    else:
        click.echo(
            f"{name}: {alias} already at {done['version']}; winner {done['winner']}; "
            "experiment concluded"
        )
    if done["forced_past_gate"]:
        click.echo(f"forced past the promotion gate: {done['forced_past_gate']}")
