"""modelctl: the command line of model-service.

Every command takes --store (default: the MODEL_SERVICE_STORE setting, else
./model_store) and exits non-zero with a one-line reason on failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

import click
import yaml

from service import (
    cli_canary,
    cli_experiment_report,
    cli_experiments,
    cli_fleet,
    cli_keys,
    cli_signing,
)
from service.cli_fleet import open_store, store_location_option
from service.cli_signing import signing_key_option
from service.errors import ServiceError
from service.files import write_atomic
from service.formatting import format_duration, format_number
from service.store import ModelStore, parse_ref
from service.store import metadata as metadata_io

store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MODEL_SERVICE_STORE",
    default="model_store",
    show_default=True,
    help="The model store directory.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Train, publish, promote, roll back and serve scikit-learn models."""


@cli.command("list")
@store_location_option
def list_models(store_location: str) -> None:
    """List models, their versions and aliases."""
    store = open_store(store_location)
    names = store.names()
    if not names:
        click.echo(f"no models in {store_location}")
        return
    for name in names:
        aliases = store.aliases(name)
        alias_text = ", ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "no aliases"
        versions = ", ".join(str(v) for v in store.versions(name))
        click.echo(f"{name}\tversions: {versions}\taliases: {alias_text}")


@cli.command()
@click.argument("ref")
@store_location_option
@click.option("--full", is_flag=True, help="Print the whole metadata.yaml.")
def show(ref: str, store_location: str, full: bool) -> None:
    """Show one model version (NAME, NAME@VERSION or NAME@ALIAS)."""
    store = open_store(store_location)
    model_ref = parse_ref(ref)
    version = store.resolve(model_ref)
    meta = store.metadata(model_ref.name, version)
    if full:
        click.echo(metadata_io.dump(meta), nl=False)
        return
    scores = meta["scores"]
    primary = scores["primary_metric"]
    aliases = [a for a, v in store.aliases(model_ref.name).items() if v == version]
    lines = [
        f"{meta['name']}@{meta['version']}" + (f"  ({', '.join(aliases)})" if aliases else ""),
        f"  {meta['description']}",
        f"  created:   {meta['created_at']}",
        f"  task:      {meta['task']} (target: {meta['target']})",
        f"  algorithm: {meta['algorithm']['class']}",
        f"  features:  {', '.join(f['name'] for f in meta['input']['features'])}",
        f"  {primary}: test {scores['test']['model'].get(primary)} "
        f"(baseline {scores['test']['baseline'].get(primary)}), "
        f"validation {scores['validation']['model'].get(primary)} "
        f"(baseline {scores['validation']['baseline'].get(primary)})",
        f"  artifact:  {meta['artifact']['file']} sha256 {meta['artifact']['sha256']}",
        f"  trained with scikit-learn {meta['environment']['scikit-learn']}",
    ]
    onnx = (meta.get("backends") or {}).get("onnx")
    lines.append(f"  {_onnx_text(onnx)}" if onnx else "  onnx: none (modelctl optimize adds it)")
    click.echo("\n".join(lines))


@cli.command()
@click.argument(
    "spec_path", metavar="SPEC", type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@store_location_option
@click.option(
    "--force",
    "force_reason",
    metavar="REASON",
    help="Publish even if the model does not beat the baseline; REASON goes into the metadata.",
)
@click.option("--dry-run", is_flag=True, help="Train and evaluate, but publish nothing.")
@click.option(
    "--no-onnx",
    is_flag=True,
    help="Publish the pickle only: no ONNX form (by default the model is converted and "
    "checked against the pickle; `modelctl optimize` can add it later).",
)
@signing_key_option
def train(
    spec_path: Path,
    store_location: str,
    force_reason: str | None,
    dry_run: bool,
    no_onnx: bool,
    signing_key: Path | None,
) -> None:
    """Train, evaluate and publish a model from a training spec (YAML)."""
    from service.training import spec as specs
    from service.training.trainer import STAGING
    from service.training.trainer import train as run_training

    spec = specs.load(spec_path)
    result = run_training(
        spec,
        open_store(store_location, sign=True, signing_key=signing_key),
        force_reason=force_reason,
        progress=sys.stderr.isatty(),
        publish=not dry_run,
        onnx=not no_onnx,
    )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(_training_summary(result.metadata))
    onnx = (result.metadata.get("backends") or {}).get("onnx")
    if onnx is not None:
        click.echo(f"  {_onnx_text(onnx)}")
    if result.version is None:
        click.echo("dry run: nothing published")
    else:
        click.echo(f"published {result.name}@{result.version} ({STAGING})")
        click.echo(
            f"next: modelctl card {result.name}@{result.version} --output card.html; "
            f"modelctl promote {result.name} {result.version}"
        )


def _training_summary(meta: dict) -> str:
    scores = meta["scores"]
    gate = scores["gate"]
    primary = scores["primary_metric"]
    rows = meta["data"]["rows"]
    algorithm = meta["algorithm"]
    estimator = algorithm["steps"][-1]["class"] if algorithm.get("steps") else algorithm["class"]
    if scores.get("method") == "cross_validation":
        split = f"{meta['data']['split']['folds']}-fold cross-validation on {rows['train']}"
    else:
        split = f"train {rows['train']}, validation {rows['validation']}"
    test = scores["test"]

    def score(value: float | None) -> str:
        return format_number(value, missing="n/a")

    lines = [
        f"{meta['name']}: {estimator} on {rows['total']} rows ({split}, test {rows['test']}; "
        f"{rows['dropped_missing_target']} without a target dropped)",
        f"  validation {primary}: {score(gate['model'])} vs baseline {score(gate['baseline'])}"
        + (f" ({gate['baseline_strategy']})" if gate.get("baseline_strategy") else "")
        + _p_value_text(gate)
        + (" (passed)" if gate["passed"] else f" (FORCED: {gate['reason']})"),
        f"  test {primary}: {score(test['model'].get(primary))} vs baseline "
        f"{score(test['baseline'].get(primary))}",
    ]
    search = meta["training"].get("search")
    if search:
        lines.append(
            f"  search: best of {search['candidates']} candidates: {search['best_params']}"
        )
    lines.append(f"  trained in {format_duration(meta['training']['duration_seconds'])}")
    return "\n".join(lines)


def _p_value_text(gate: dict) -> str:
    tested = gate.get("significance")
    if not tested:
        return ""
    return f", p {format_number(tested['p_value'], 3)} (alpha {format_number(gate['alpha'])})"


def _onnx_text(entry: dict) -> str:
    """One line on a version's ONNX form: what serves it, and why not onnxruntime."""
    if not entry.get("available"):
        return f"onnx: not available ({entry.get('reason', 'no reason recorded')})"
    parity = entry["parity"]
    diffs = ", ".join(
        f"{k} {format_number(v, 2)}" for k, v in (parity.get("max_abs_diff") or {}).items()
    )
    labels = "labels identical, " if parity.get("labels_identical") else ""
    return (
        f"onnx: {entry['file']} ({entry['precision']}), parity on {parity['rows']} "
        f"{parity['source']} rows: {labels}max abs diff {diffs or 'n/a'} "
        f"(tolerance {format_number(parity['tolerance']['atol'], 2)})"
    )


@cli.command()
@click.argument("name")
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The pickled, fitted estimator.",
)
@click.option(
    "--metadata",
    "metadata_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Its metadata.yaml (version, artifact and environment are filled in).",
)
@click.option("--alias", "aliases", multiple=True, help="Point these aliases at the new version.")
@store_location_option
@signing_key_option
def publish(
    name: str,
    model_path: Path,
    metadata_path: Path,
    aliases: tuple[str, ...],
    store_location: str,
    signing_key: Path | None,
) -> None:
    """Publish a pickle and its metadata as a new version of NAME (atomically)."""
    from service.runtime.model import LoadedModel

    store = open_store(store_location, sign=True, signing_key=signing_key)
    meta = metadata_io.read(metadata_path)
    if not isinstance(meta, dict):
        raise click.ClickException(f"{metadata_path}: expected a YAML mapping")
    version = store.publish(
        name, model_path.read_bytes(), meta, aliases=aliases, verify=LoadedModel
    )
    click.echo(f"published {name}@{version}" + (f" ({', '.join(aliases)})" if aliases else ""))


@cli.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option(
    "--alias", default="production", show_default=True, help="The alias to point at VERSION."
)
@click.option("--reason", default="", help="Recorded in the alias history.")
@click.option(
    "--force",
    is_flag=True,
    help="Promote even if VERSION scores worse on its test set than the alias's current "
    "version, or cannot be compared with it (recorded in the alias history).",
)
@store_location_option
def promote(
    name: str, version: int, alias: str, reason: str, force: bool, store_location: str
) -> None:
    """Point ALIAS of NAME at VERSION, unless it scores worse than the current one."""
    store = open_store(store_location)
    overridden = store.check_promotion(name, version, alias) if force else None
    previous = store.promote(name, version, alias, reason, force=force)
    click.echo(f"{name}: {alias} -> {version} (was {previous})")
    if overridden is not None:
        click.echo(f"forced past the promotion gate: {overridden.reason}")


@cli.command()
@click.argument("name")
@click.option("--alias", default="production", show_default=True, help="The alias to take back.")
@click.option("--reason", default="", help="Recorded in the alias history.")
@store_location_option
def rollback(name: str, alias: str, reason: str, store_location: str) -> None:
    """Return ALIAS of NAME to the version it had before the last promote."""
    before, after = open_store(store_location).rollback(name, alias, reason)
    click.echo(f"{name}: {alias} -> {after} (was {before})")


@cli.command()
@click.argument("ref")
@store_option
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The training spec, to re-create the validation rows from its data (default: the "
    "spec recorded in the metadata, a data path in it taken from the current directory).",
)
def optimize(ref: str, store_path: Path, spec_path: Path | None) -> None:
    """Add the ONNX form to a published version (NAME@VERSION or NAME@ALIAS).

    Converts the pickle, checks it against the pickle on the version's validation rows
    (re-created from its training data while that has the recorded sha256, else on its
    golden rows), and writes model.onnx and backends.onnx into the version. Running
    services switch to onnxruntime at their next look at the store."""
    from service.training.optimize import optimize_version

    store = open_store(store_path, sign=True)
    model_ref = parse_ref(ref)
    version = store.resolve(model_ref)
    compiled = optimize_version(store, model_ref.name, version, spec_path=spec_path)
    click.echo(f"{model_ref.name}@{version}: {_onnx_text(compiled.entry)}")
    note = compiled.entry.get("parity", compiled.entry).get("source_note")
    if note:
        click.echo(f"  parity rows: golden only; {note}")


@cli.command()
@click.argument("name")
@click.argument("a")
@click.argument("b")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(name: str, a: str, b: str, store_path: Path, as_json: bool) -> None:
    """Compare versions A and B of NAME (each a version number or an alias): scores side
    by side, and what differs in algorithm, data, input features and environment."""
    from service.training.compare import compare as compare_metadata

    store = ModelStore(store_path)
    metas = [store.metadata(name, store.resolve(parse_ref(f"{name}@{ref}"))) for ref in (a, b)]
    result = compare_metadata(*metas)
    aliases = store.aliases(name)
    for side in ("a", "b"):
        version = result[side]["version"]
        result[side]["aliases"] = sorted(x for x, v in aliases.items() if v == version)
    click.echo(json.dumps(result, indent=2) if as_json else _comparison_text(result))


def _comparison_text(result: dict) -> str:
    lines = []
    for side in ("a", "b"):
        who = result[side]
        tags = f" ({', '.join(who['aliases'])})" if who["aliases"] else ""
        lines.append(f"{side.upper()}: {who['name']}@{who['version']}{tags}, {who['created_at']}")
    for split, table in result["scores"].items():
        rows = [[split, "A", "B", "delta", "better"]]
        for row in table["rows"]:
            name = ("* " if row["primary"] else "  ") + row["metric"]
            better = (row["better"] or "").upper()
            rows.append([name, *_numbers(row), better])
        rows += [[f"  baseline {row['metric']}", *_numbers(row), ""] for row in table["baseline"]]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines.append("")
        for row in rows:
            numbers = (c.rjust(w) for c, w in zip(row[1:4], widths[1:], strict=True))
            lines.append("  ".join([row[0].ljust(widths[0]), *numbers, row[4]]).rstrip())
    lines.append("(* primary metric; better: the side that scores better, = when equal)")
    if result.get("gate"):
        from service.training.compare import gate_text

        lines += ["", *gate_text(result["gate"])]
    for title, key in [
        ("algorithm", "algorithm"),
        ("data", "data"),
        ("input features", "features"),
        ("environment", "environment"),
    ]:
        changes = [_change_text(change) for change in result[key]]
        width = max((len(label) for label, _ in changes), default=0)
        lines.append(f"\n{title}: " + ("" if changes else "same"))
        lines += [f"  {label.ljust(width)}  {text}".rstrip() for label, text in changes]
    return "\n".join(line.rstrip() for line in lines)


def _numbers(row: dict) -> list[str]:
    """A compare row's scores: at most 4 decimals, trailing zeros dropped; '-' if missing."""
    return [
        format_number(row["a"], decimals=4, trim=True, missing="-"),
        format_number(row["b"], decimals=4, trim=True, missing="-"),
        format_number(row["delta"], decimals=4, trim=True, sign=True, missing="-"),
    ]


def _change_text(change: dict) -> tuple[str, str]:
    """(what changed, how) for one difference of compare's lists."""

    def show(value) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    kind, label = change["change"], change.get("path") or change.get("feature")
    if kind == "reordered":
        return "feature order", f"{', '.join(change['a'])} -> {', '.join(change['b'])}"
    if "feature" in change and kind in ("added", "removed"):
        side = "B" if kind == "added" else "A"
        return label, f"{kind} ({change['dtype']}; only in {side})"
    if "feature" in change:
        label = f"{label}.{change['field']}"
        if change["field"] == "categories" and (change["added"] or change["removed"]):
            new, gone = (", ".join(map(str, change[k])) for k in ("added", "removed"))
            return label, " ".join(t for t in (new and f"+[{new}]", gone and f"-[{gone}]") if t)
    if kind == "added":
        return label, f"{show(change['b'])} (only in B)"
    if kind == "removed":
        return label, f"{show(change['a'])} (only in A)"
    return label, f"{show(change['a'])} -> {show(change['b'])}"


@cli.command()
@click.argument("ref")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The CSV of rows to predict, with a header naming the features.",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The CSV of predictions to write.",
)
@click.option(
    "--skip-bad-rows",
    is_flag=True,
    help="Write bad rows to a reject file instead of stopping at the first.",
)
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Reject file (default: OUTPUT with .rejects.csv).",
)
@click.option(
    "--chunk-rows",
    default=5000,
    show_default=True,
    type=click.IntRange(1),
    help="Rows read and predicted at a time, so a file larger than memory works.",
)
@click.option(
    "--backend",
    type=click.Choice(["sklearn", "auto"]),
    default="sklearn",
    show_default=True,
    help="sklearn: the pickle, the same file whatever --chunk-rows; auto: onnxruntime where "
    "the model has a checked ONNX form (faster; the last digits of probabilities may then "
    "depend on the chunk size).",
)
@store_option
def predict(
    ref: str,
    input_path: Path,
    output_path: Path,
    skip_bad_rows: bool,
    rejects_path: Path | None,
    chunk_rows: int,
    backend: str,
    store_path: Path,
) -> None:
    """Batch prediction: rows of a CSV (with a header) to a CSV of predictions."""
    from service.batch import predict_csv
    from service.runtime import model as model_runtime

    store = open_store(store_path)
    model_ref = parse_ref(ref)
    model = model_runtime.load(store, model_ref.name, store.resolve(model_ref), backend=backend)
    result = predict_csv(
        model,
        input_path,
        output_path,
        chunk_rows=chunk_rows,
        skip_bad_rows=skip_bad_rows,
        rejects_path=rejects_path,
        progress=sys.stderr.isatty(),
    )
    message = f"{result.predicted} of {result.rows} rows predicted by {model.name}@{model.version}"
    if result.rejected:
        target = rejects_path or output_path.with_name(output_path.stem + ".rejects.csv")
        message += f"; {result.rejected} bad rows written to {target}"
    click.echo(message)


@cli.command()
@click.argument("ref")
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the HTML page.",
)
@store_option
def card(ref: str, output_path: Path, store_path: Path) -> None:
    """Write the model card of NAME, NAME@VERSION or NAME@ALIAS: one self-contained HTML page."""
    from service.card import render_card

    store = ModelStore(store_path)
    model_ref = parse_ref(ref)
    version = store.resolve(model_ref)
    meta = store.metadata(model_ref.name, version)
    html = render_card(meta, aliases=store.aliases(model_ref.name))
    write_atomic(output_path, html)
    click.echo(f"wrote {output_path} ({model_ref.name}@{version})")


@cli.command("export-log")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MODEL_SERVICE_STATE_DIR",
    default=".monitoring",
    show_default=True,
    help="The monitoring state directory (its predictions/ holds the log).",
)
@click.option("--model", "model_name", help="Only this model's predictions.")
@click.option("--since", help="Only predictions at or after this ISO-8601 time (UTC if no zone).")
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The CSV file to write.",
)
def export_log(
    state_dir: Path, model_name: str | None, since: str | None, output_path: Path
) -> None:
    """Merge every worker's prediction log (rotated files too) into one CSV ordered by time."""
    from service.monitoring import predlog

    try:
        since_time = predlog.parse_time(since) if since else None
    except ValueError:
        raise click.BadParameter(f"not an ISO-8601 time: {since!r}", param_hint="--since") from None
    files = predlog.log_files(state_dir)
    if not files:
        raise click.ClickException(f"no prediction log under {predlog.log_dir(state_dir)}")
    rows = predlog.export_csv(state_dir, output_path, model=model_name, since=since_time)
    click.echo(f"wrote {rows} predictions from {len(files)} log files to {output_path}")


@cli.command("train-demo")
@store_location_option
@click.option("--if-empty", is_flag=True, help="Do nothing when the store holds any model.")
@signing_key_option
def train_demo(store_location: str, if_empty: bool, signing_key: Path | None) -> None:
    """Train the demo models (iris, breast cancer, diabetes) into the store."""
    from service.training.demo import train_demo_models

    store = open_store(store_location, sign=True, signing_key=signing_key)
    if if_empty and store.exists() and store.names():
        click.echo(f"{store_location} already holds models: {', '.join(store.names())}")
        return
    for name, version in train_demo_models(store, progress=sys.stderr.isatty()):
        click.echo(f"published {name}@{version} (production)")


@cli.command()
@store_option
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="The HTTP port on 127.0.0.1 (Nginx's, or Gunicorn's with --no-nginx).",
)
@click.option("--workers", type=click.IntRange(1), help="Gunicorn workers (default: CPU count).")
@click.option(
    "--runtime-dir",
    default=".run",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Pid files, logs and the rendered nginx.conf.",
)
@click.option("--no-nginx", is_flag=True, help="Serve from Gunicorn directly.")
@click.option(
    "--grpc-port",
    default=8081,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The Open Inference Protocol's gRPC server on 127.0.0.1; 0: none.",
)
@click.option(
    "--instances",
    type=click.IntRange(1, 2),
    help="Gunicorn instances behind Nginx, each with its share of the workers [default: 2 "
    "with 2 or more workers]. Two survive the death of a Gunicorn master without a failed "
    "request; one saves a second master's memory (~140 MiB with the demo models).",
)
@click.option(
    "--rate-limit",
    help="Requests per API key, or per client address without a key, at Nginx: NNNr/s, "
    "NNNr/m or off (setting rate_limit, default 20000r/s).",
)
@click.option(
    "--rate-limit-burst",
    type=click.IntRange(0),
    help="Requests above the rate served at once before a 429 (default 2000).",
)
@click.option(
    "--conn-limit",
    type=click.IntRange(0),
    help="Requests in progress per client address at Nginx; 0: none (default 512).",
)
@click.option(
    "--admin-network",
    "admin_networks",
    multiple=True,
    help="A network (CIDR) that may reach /v1/admin/ besides loopback; repeatable.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM certificate (chain): Nginx answers HTTPS on --tls-port and redirects HTTP there.",
)
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="Its PEM key.")
@click.option("--tls-port", type=click.IntRange(1, 65535), help="HTTPS port (default 8443).")
def serve(
    store_path: Path,
    port: int,
    workers: int | None,
    runtime_dir: Path,
    no_nginx: bool,
    grpc_port: int,
    rate_limit: str | None,
    rate_limit_burst: int | None,
    conn_limit: int | None,
    admin_networks: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    tls_port: int | None,
    instances: int | None,
) -> None:
    """Start Gunicorn behind Nginx on 127.0.0.1:PORT (and gRPC) in the background."""
    from service.config import ENV_PREFIX, Settings
    from service.localstack import NGINX_INSTALL_HINT, LocalStack, nginx_binary

    # The edge's options are its settings (MODEL_SERVICE_*), checked here as they would be.
    edge_env = {
        f"{ENV_PREFIX}{name.upper()}": str(value)
        for name, value in (
            ("rate_limit", rate_limit),
            ("rate_limit_burst", rate_limit_burst),
            ("conn_limit_per_client", conn_limit),
            ("admin_networks", ",".join(admin_networks) or None),
            ("tls_certificate", tls_cert and os.path.abspath(tls_cert)),
            ("tls_certificate_key", tls_key and os.path.abspath(tls_key)),
            ("tls_port", tls_port),
        )
        if value is not None
    }
    try:
        Settings.load(environ={**os.environ, **edge_env})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    use_nginx = not no_nginx
    if use_nginx and nginx_binary() is None:
        click.echo(
            f"nginx is not installed, so Gunicorn serves directly on port {port} "
            f"(install it with: {NGINX_INSTALL_HINT})"
        )
        use_nginx = False
    stack = LocalStack(
        runtime_dir=runtime_dir,
        store=store_path,
        port=port,
        workers=workers,
        use_nginx=use_nginx,
        grpc_port=grpc_port or None,
        extra_env=edge_env,
        instances=instances if use_nginx else 1,
    )
    stack.start()
    front = "Nginx -> Gunicorn" if use_nginx else "Gunicorn"
    click.echo(
        f"model-service is up at {stack.url} ({front}, {stack.total_workers} workers in "
        f"{stack.instances} Gunicorn instance{'s' * (stack.instances > 1)}, supervised; "
        f"logs in {stack.runtime_dir})"
    )
    if stack.tls_url:
        click.echo(f"HTTPS at {stack.tls_url} ({stack.url} redirects there)")
    if stack.grpc_address:
        click.echo(f"gRPC (Open Inference Protocol) at {stack.grpc_address}")
    # With HTTPS on, plain HTTP only redirects: show the URL that answers.
    url = stack.tls_url or stack.url
    example = _curl_example(ModelStore(store_path), url)
    if example:
        if stack.tls_url:
            certificate = stack.edge_settings().tls_certificate
            example += f" \\\n       --cacert {certificate}  # if it is self-signed"
        click.echo(
            f"\nTry it:\n{example}\n\nStatus: {url}/    API docs: {url}/docs    "
            f"Metrics: {url}/metrics    Stop: make stop"
        )


def _curl_example(store: ModelStore, url: str) -> str | None:
    """A request that works against this store: the first golden row of a served model."""
    names = store.names()
    if not names:
        return None
    name = "iris-classifier" if "iris-classifier" in names else names[0]
    try:
        meta = store.metadata(name, store.resolve(parse_ref(name)))
    except ServiceError:
        return None
    features = meta["input"]["features"]
    golden = meta.get("golden") or {"instances": [[f["stats"]["mean"] for f in features]]}
    row = dict(zip((f["name"] for f in features), golden["instances"][0], strict=True))
    body = json.dumps({"instances": [row]})
    return (
        f"  curl -s -X POST {url}/v1/models/{name}/predict \\\n"
        "       -H 'Content-Type: application/json' \\\n"
        f"       -d '{body}'"
    )


@cli.command()
@click.option(
    "--runtime-dir",
    default=".run",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The --runtime-dir `modelctl serve` was given.",
)
def stop(runtime_dir: Path) -> None:
    """Stop the processes `modelctl serve` started (by their pid files)."""
    from service.localstack import LocalStack

    stopped, findings = LocalStack(runtime_dir=runtime_dir, store=Path(".")).stop_and_report()
    # What had died before (and what supervisord started again) comes first: a reason to look
    # at the logs.
    for finding in findings:
        click.echo(finding)
    click.echo("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@cli.command("hash-key")
@click.option("--key", help="Hash this key instead of making a new one.")
def hash_key(key: str | None) -> None:
    """Make an admin key and print it with the sha256 the service stores."""
    key = key or secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    click.echo(
        f"key:    {key}\nsha256: {digest}\nserve with MODEL_SERVICE_ADMIN_KEY_HASHES={digest}"
    )


cli_fleet.register(cli)
cli_signing.register(cli)
cli_keys.register(cli)
cli_experiments.register(cli)
cli_experiment_report.register(cli_experiments.experiment_group)
cli_canary.register(cli)


def main(argv: list[str] | None = None) -> int:
    try:
        result = cli.main(args=argv, prog_name="modelctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("modelctl: aborted", err=True)
        return 1
    except ServiceError as exc:
        click.echo(f"modelctl: {exc.message}", err=True)
        return 1
    except (OSError, yaml.YAMLError) as exc:
        click.echo(f"modelctl: {exc}", err=True)
        return 1
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
