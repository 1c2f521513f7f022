"""modelctl canary: ramp a new version through a model's traffic, rolled back on its own as
soon as it is worse than production, promoted through the promotion gate when every step
passes (service.experiments.canary)."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from service.cli_fleet import open_store, store_location_option
from service.config import Settings
from service.formatting import format_number, format_percent

# Exit codes: one per way a canary ends, so scripts can tell them apart.
EXIT_CODES = {
    "promoted": 0,
    "rolled_back": 1,
    "no_evidence": 3,
    "refused": 4,
    "interrupted": 130,
}


def register(cli: click.Group) -> None:
    cli.add_command(canary)


def _steps(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated shares, e.g. 5,25,50,100") from None


@click.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(1))
@click.option(
    "--steps",
    default="5,25,50,100",
    show_default=True,
    callback=_steps,
    help="The canary's share of the traffic at each step, in percent, rising.",
)
@click.option(
    "--step-seconds",
    type=click.FloatRange(0),
    default=300,
    show_default=True,
    help="How long each step holds before its verdict.",
)
@click.option(
    "--min-samples",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Requests each variant needs before a step's verdict counts.",
)
@click.option(
    "--min-labels",
    type=click.IntRange(0),
    help="Labelled requests (feedback) each variant needs for the quality comparison "
    "[default: --min-samples]; 0: no quality comparison.",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(0),
    default=900,
    show_default=True,
    help="Seconds a step waits beyond --step-seconds for the minimum samples; after that "
    "the canary ends, production unchanged.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 0.5, min_open=True),
    default=0.05,
    show_default=True,
    help="Chance of rolling back a canary that is in truth no worse, over all steps.",
)
@click.option(
    "--error-margin",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Error-rate increase tolerated (a share: 0.01 = 1 point).",
)
@click.option(
    "--latency-margin",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.01,
    show_default=True,
    help="Increase tolerated in the share of requests slower than production's p99.",
)
@click.option(
    "--quality-margin",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.02,
    show_default=True,
    help="Accuracy drop tolerated (classifier), or mean absolute error rise as a fraction "
    "of production's (regressor).",
)
@click.option("--key-header", help="Sticky assignment on this request header (e.g. X-Client-ID).")
@click.option("--key-field", help="Sticky assignment on this field of the request body.")
@store_location_option
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MODEL_SERVICE_STATE_DIR",
    help="This host's monitoring state, where the evidence is read without --url "
    "[default: the state_dir setting].",
)
@click.option(
    "--url",
    "urls",
    multiple=True,
    help="Read the evidence from these hosts' admin API instead (repeatable: a fleet).",
)
@click.option(
    "--key",
    envvar="MODEL_SERVICE_KEY",
    help="An admin key for --url (default: MODEL_SERVICE_KEY).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
@click.pass_context
def canary(
    ctx: click.Context,
    name: str,
    version: int,
    steps: tuple[float, ...],
    step_seconds: float,
    min_samples: int,
    min_labels: int | None,
    max_wait: float,
    alpha: float,
    error_margin: float,
    latency_margin: float,
    quality_margin: float,
    key_header: str | None,
    key_field: str | None,
    store_location: str,
    state_dir: Path | None,
    urls: tuple[str, ...],
    key: str | None,
    as_json: bool,
) -> None:
    """Ramp VERSION of NAME through the traffic step by step; roll it back as soon as its
    errors, latency or live quality are worse than production's with statistical
    evidence, promote it through the promotion gate when every step passes.

    Exit status: 0 promoted, 1 rolled back, 3 too few requests or labels within
    --max-wait, 4 refused by the promotion gate, 130 interrupted; production is unchanged
    in all but the first."""
    from service.experiments import canary as canaries
    from service.experiments import evidence

    policy = canaries.Policy(
        steps=steps,
        step_seconds=step_seconds,
        min_samples=min_samples,
        min_labels=min_samples if min_labels is None else min_labels,
        alpha=alpha,
        error_margin=error_margin,
        latency_margin=latency_margin,
        quality_margin=quality_margin,
        max_wait=max_wait,
        poll_seconds=min(5.0, max(step_seconds / 10, 0.2)),
    )
    if urls:
        if not key:
            raise click.UsageError("--url needs an admin key: --key or MODEL_SERVICE_KEY")
        hosts = [url.rstrip("/") for url in urls]

        def totals(experiment_id: str):
            return evidence.remote_totals(hosts, key, name, experiment_id)

    else:
        settings = _settings(state_dir)

        def totals(experiment_id: str):
            return evidence.local_totals(settings, name, experiment_id)

    out = sys.stderr if as_json else sys.stdout
    controller = canaries.Canary(
        open_store(store_location),
        name,
        version,
        policy,
        totals,
        key_header=key_header,
        key_field=key_field,
        on_event=Progress(name, version, out),
    )
    with _signals_interrupt(controller):
        outcome = controller.run()
    if as_json:
        click.echo(json.dumps(outcome.to_dict(), indent=2))
    ctx.exit(EXIT_CODES[outcome.result])


def _settings(state_dir: Path | None) -> Settings:
    try:
        settings = Settings.load()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return dataclasses.replace(settings, state_dir=state_dir) if state_dir else settings


@contextmanager
def _signals_interrupt(controller) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the canary cleanly: traffic back to production, recorded."""

    def handler(signum: int, frame) -> None:
        controller.interrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Progress:
    """One plain line per event (a log of what happened, readable in CI output too); while
    a step waits for samples, a line every WAITING_EVERY seconds."""

    WAITING_EVERY = 10.0

    def __init__(self, name: str, version: int, out):
        self.name, self.version, self.out = name, version, out
        self.last_waiting = -math.inf

    def __call__(self, event) -> None:
        data, version = event.data, self.version
        if event.kind == "start":
            line = f"canary {data['experiment']}: {self.name}@{version} against production"
        elif event.kind == "step":
            self.last_waiting = -math.inf
            line = (
                f"step {event.step}: {event.share:g} % to version {version}, "
                f"holding {data['hold_seconds']:g} s"
            )
        elif event.kind == "waiting":
            if time.monotonic() - self.last_waiting < self.WAITING_EVERY:
                return
            self.last_waiting = time.monotonic()
            line = f"step {event.step}: waiting for samples ({data['short']})"
        elif event.kind == "verdict":
            line = f"step {event.step} ({event.share:g} %): {data['verdict'].upper()}"
            line = "\n".join([line, *(f"  {check}" for check in _check_lines(data["checks"]))])
        else:
            line = f"{data['result'].replace('_', ' ')}: {data['reason']}"
        click.echo(line, file=self.out)


def _check_lines(checks: list[dict]) -> Iterator[str]:
    for check in checks:
        if "p_value" not in check:
            yield f"{check['metric']}: not tested ({check.get('note', '')})"
            continue
        percent = check.get("note") != "mae"

        def show(value, percent=percent) -> str:
            if value is None:
                return "n/a"
            return format_percent(value, decimals=2) if percent else format_number(value)

        samples = check["samples"]
        yield (
            f"{check['metric']}: canary {show(check.get('canary'))} "
            f"(n={samples['canary']}) vs production {show(check.get('production'))} "
            f"(n={samples['production']}); lower bound of the difference "
            f"{show(check.get('lower_bound'))} vs margin {show(check.get('margin'))}; "
            f"p={format_number(check['p_value'], 3)} vs {format_number(check['alpha'], 3)}"
            + (" WORSE" if check.get("worse") else "")
            + (f" [{check['note']}]" if check.get("note") not in (None, "", "mae") else "")
        )
