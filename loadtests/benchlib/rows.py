"""From figures to rows: the median over rounds, one table row per figure with its ratio
to the row it is compared with, and the goals (P1-P5, M) with their targets and
bounds."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from .payloads import BATCH_ROWS, IRIS, NATIVE_LISTS, NO_BACKEND, PROTOCOL_LABELS, V2_BINARY
from .rounds import (
    BATCH_PROTOCOLS,
    MEMORY_LAYOUTS,
    MEMORY_WORKERS,
    MONITORING_OFF_MODELS,
    PACED_FRACTION,
    SINGLE_ROW_PROTOCOLS,
    TWO_INSTANCE_FLOOR,
    memory_key,
)
from .settings import BenchSettings
from .stacks import BACKEND_ENV, BARE, BARE_WITH_PROBABILITIES, DUTIES, DUTIES_BINARY

GOALS = {
    "P1": (">=", 0.90),
    "P3 native": (">=", 0.85),
    "P3 v2 binary": (">=", 1.0),
    "P4": ("<=", 1.3),
    "P5": ("<=", 1.2),
    "M": (">=", 0.90),
    "MLflow": (">=", 3.0),
}


def median_figures(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each figure's median over the rounds; requests and errors are summed, and the
    backend is the one any round's answers named."""
    merged: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(k for figures in rounds for k in figures):
        present = [figures[key] for figures in rounds if key in figures]
        entry: dict[str, Any] = {}
        for field in present[0]:
            values = [p[field] for p in present if field in p]
            if field == "backend":
                entry[field] = next((v for v in values if v != NO_BACKEND), NO_BACKEND)
            elif field in ("requests", "errors", "workers"):
                entry[field] = sum(values) if field != "workers" else values[0]
            else:
                entry[field] = statistics.median(values)
        merged[key] = entry
    return merged


@dataclasses.dataclass
class Row:
    """One line of the table, and one object of the JSON "goals" or "rows" list."""

    key: str  # the figure it shows, e.g. single/service/iris-classifier
    section: str
    label: str
    unit: str = ""
    value: float | None = None
    backend: str = ""
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    ratio: float | None = None
    ratio_of: str = ""
    goal: str = ""
    target: float | None = None
    comparison: str = ""
    passed: bool | None = None
    # What the goal's ratio can reach on this machine: for P1, the bare handler doing the
    # duties P1 names at their least (loadtests/duties_app.py), as a ratio to the bare
    # handler; for P3, the body's intake (hello parsing it) and the backend on the same
    # cores, and the duties handler on the same 1,000-row body; for P4, the least two
    # Gunicorn instances weigh.
    bound: float | None = None
    bound_label: str = "bound"
    # A goal's ratio and bound in each round, when there were several: the figures above
    # are medians, and these show how far one round of this machine moved from the next.
    round_ratios: list[float | None] = dataclasses.field(default_factory=list)
    round_bounds: list[float | None] = dataclasses.field(default_factory=list)
    note: str = ""
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {
    "goals": "Goals: ratios of two figures of this run, with their targets, and the bound "
    "set by a handler that does less (rows below)",
    "single": "Single-row predictions through {front}, req/s (closed loop); ratio ÷ the row named",
    "paced": f"Single-row load paced at {PACED_FRACTION:.0%} of the closed loop's rate (P5): "
    "achieved req/s, target in the row; ratio p99 ÷ p50",
    "batch": "1,000-row requests through {front}, rows/s (closed loop, 3 s each); "
    "ratio ÷ the naive handler",
    "inproc": "In process, no HTTP: median ms per call; ratio ÷ the estimator's own predict",
    "breakdown": "A 1,000-row native JSON request in one worker-like process, stage by stage "
    "(loadtests/request_breakdown.py), ms; ratio ÷ the whole. Under load: the 1,000-row rows "
    "above (hello reading, hello parsing, bare handler, service)",
    "request": "One single-row request in one worker-like process, no HTTP "
    "(loadtests/request_cost.py), µs; ratio ÷ the bare handler. The service's own work per "
    "request is its figure less the bare handler's",
    "memory": "Memory: PSS of the Gunicorn master + workers (/proc/PID/smaps_rollup), MiB",
    "peers": "Peers: MLflow's scoring server (mlflow models serve -w 2), the same pickles and "
    "rows; ratio ÷ naive",
}
# The figure a row shows for each kind of key, its unit, and a scale.
MAIN_FIGURE = {
    "single": ("requests_per_s", "req/s", 1.0),
    "paced": ("requests_per_s", "req/s", 1.0),
    "batch": ("rows_per_s", "rows/s", 1.0),
    "inproc": ("seconds", "ms", 1000.0),
    "breakdown": ("ms", "ms", 1.0),
    "request": ("us", "µs", 1.0),
    "memory": ("total_pss_mib", "MiB", 1.0),
}


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def figure_row(
    figures: dict[str, dict[str, Any]],
    key: str,
    section: str,
    label: str,
    of: tuple[str, str] | None = None,
    backend: str | None = None,
) -> Row | None:
    """The row of one figure, with its ratio to the figure `of` names: (key, label)."""
    found = figures.get(key)
    if found is None:
        return None
    field, unit, scale = MAIN_FIGURE[key.split("/")[0]]
    reference = figures.get(of[0], {}).get(field) if of else None
    return Row(
        key=key,
        section=section,
        label=label,
        unit=unit,
        value=found[field] * scale,
        backend=backend or found.get("backend", ""),
        p50_ms=found.get("p50_ms"),
        p99_ms=found.get("p99_ms"),
        errors=found.get("errors"),
        ratio=ratio(found[field], reference),
        ratio_of=of[1] if of and reference else "",
        figures=dict(found),
    )


def detail_rows(
    figures: dict[str, dict[str, Any]],
    names: list[str],
    settings: BenchSettings,
    peer_version: str | None,
    peer_note: str,
) -> list[Row]:
    rows: list[Row | None] = []

    def add(key: str, section: str, label: str, of=None, backend=None) -> None:
        rows.append(figure_row(figures, key, section, label, of, backend))

    hello = ("single/hello", "hello")
    add("single/hello", "single", "hello (ceiling)", hello)
    for name in names:
        naive = f"single/naive/{name}"
        reference = (naive, "naive") if naive in figures else hello
        add(naive, "single", f"naive {name}", hello, backend="pickle")
        label = f"bare onnxruntime handler, {name}"
        add(f"single/{BARE}/{name}", "single", label, hello, backend="onnxruntime")
        label = f"bound: bare + P1's duties, {name}"
        bare = (f"single/{BARE}/{name}", "bare")
        add(f"single/{DUTIES}/{name}", "single", label, bare, backend="onnxruntime")
        add(f"single/service/{name}", "single", name, reference)
        add(f"single/backend-sklearn/{name}", "single", f"{name}, backend=sklearn", reference)
        add(f"single/monitoring-off/{name}", "single", f"{name}, monitoring off", reference)
        for protocol in SINGLE_ROW_PROTOCOLS:
            native = (f"single/service/{name}", "native")
            add(
                f"single/{protocol}/{name}",
                "single",
                f"{name}, {PROTOCOL_LABELS[protocol]}",
                native,
            )
    if not any(key.startswith("single/backend-sklearn/") for key in figures):
        note = "not measured: the answers name no backend (the pickle is the only one)"
        rows.append(Row("single/backend-sklearn", "single", f"{BACKEND_ENV}=sklearn", note=note))

    paced = (
        ("paced/hello", "hello (ceiling)", None),
        (f"paced/naive/{IRIS}", f"naive {IRIS}", "pickle"),
        (f"paced/service/{IRIS}", IRIS, None),
    )
    for key, label, backend in paced:
        if key in figures:
            target = figures[key]["target_requests_per_s"]
            add(key, "paced", f"{label}, target {target:,.0f} req/s", backend=backend)
            rows[-1].ratio = ratio(rows[-1].p99_ms, rows[-1].p50_ms)
            rows[-1].ratio_of = "p99 ÷ p50"

    for name in names:
        naive = (f"batch/naive/{name}", "naive")
        cores = figures.get(f"batch/compute-bound/{name}", {}).get("cores", "all")
        add(
            f"batch/compute-bound/{name}",
            "batch",
            f"bound: backend alone, {cores} cores, {name}",
            naive,
        )
        add(f"batch/hello/{name}", "batch", f"bound: hello + orjson parse, {name}", naive)
        add(f"batch/hello-binary/{name}", "batch", f"bound: hello reading v2 binary, {name}", naive)
        add(f"batch/naive/{name}", "batch", f"naive {name}", naive, backend="pickle")
        label = f"bare handler (onnxruntime, orjson), {name}"
        add(f"batch/{BARE}/{name}", "batch", label, naive, backend="onnxruntime")
        label = f"bound: bare handler answering probabilities, {name}"
        add(f"batch/{BARE_WITH_PROBABILITIES}/{name}", "batch", label, naive, "onnxruntime")
        label = f"bound: bare + P1's duties, {name}"
        add(f"batch/{DUTIES}/{name}", "batch", label, naive, backend="onnxruntime")
        label = f"bound: bare + P1's duties, v2 binary, {name}"
        add(f"batch/{DUTIES_BINARY}/{name}", "batch", label, naive, backend="onnxruntime")
        for protocol in BATCH_PROTOCOLS:
            add(f"batch/{protocol}/{name}", "batch", f"{name}, {PROTOCOL_LABELS[protocol]}", naive)

    calls = {"loaded-model": "LoadedModel", "loaded-model-sklearn": "LoadedModel"}
    calls["estimator"] = "estimator"
    for name in names:
        for count in (1, BATCH_ROWS):
            estimator = (f"inproc/estimator/{count}/{name}", "estimator")
            for call, label in calls.items():
                label = f"{name}, {count:,} row{'s' if count > 1 else ''}, {label}.predict"
                add(f"inproc/{call}/{count}/{name}", "inproc", label, estimator)
        label = f"{name}, {BATCH_ROWS:,} rows, backend alone"
        estimator = (f"inproc/estimator/{BATCH_ROWS}/{name}", "estimator")
        add(f"inproc/backend/{BATCH_ROWS}/{name}", "inproc", label, estimator)

    for name in names:
        whole = (f"breakdown/whole/{name}", "whole")
        stages = [
            k.split("/")[1]
            for k in figures
            if k.startswith("breakdown/") and k.endswith(f"/{name}")
        ]
        for stage in stages:
            label = f"{name}, {stage}" + (" (Nginx, if asked)" if stage == "gzip" else "")
            add(f"breakdown/{stage}/{name}", "breakdown", label, whole)

    add("request/hello", "request", "hello (ceiling)")
    for name in names:
        bare = (f"request/{BARE}/{name}", "bare")
        add(f"request/{BARE}/{name}", "request", f"bare onnxruntime handler, {name}", bare)
        label = f"bare handler doing P1's duties, {name}"
        add(f"request/{DUTIES}/{name}", "request", label, bare)
        add(f"request/service/{name}", "request", name, bare)
        add(f"request/monitoring-off/{name}", "request", f"{name}, monitoring off", bare)

    one_worker = (memory_key(MEMORY_WORKERS[0]), "1 worker")
    for workers in MEMORY_WORKERS:
        add(
            memory_key(workers),
            "memory",
            f"model-service, {workers}w, P4 warm-up",
            one_worker,
        )
    for workers, instances in MEMORY_LAYOUTS:
        add(
            memory_key(workers, instances),
            "memory",
            f"model-service, {workers}w in {instances} instance{'s' if instances > 1 else ''}",
            one_worker,
        )
    add("memory/service", "memory", f"model-service, {settings.workers}w, after the loads")
    add("memory/hello", "memory", f"hello, {settings.workers}w, after the load")
    for name in names:
        add(f"memory/naive/{name}", "memory", f"naive {name}, {settings.workers}w")
    for row in rows:
        if row is not None and row.section == "memory":
            row.label += f"; largest worker {row.figures['worker_pss_mib']:.0f}"

    if peer_version is None:
        rows.append(Row("peers/mlflow", "peers", "mlflow models serve", note=peer_note))
    for name in names:
        label = f"{name}, MLflow {peer_version}"
        naive = (f"single/naive/{name}", "naive")
        add(f"single/mlflow-serve/{name}", "peers", f"{label}, 1 row", naive, "pickle")
        naive = (f"batch/naive/{name}", "naive")
        add(f"batch/mlflow-serve/{name}", "peers", f"{label}, 1,000 rows", naive, "pickle")
    return [row for row in rows if row is not None]


def goal_rows(figures: dict[str, dict[str, Any]], names: list[str]) -> list[Row]:
    """Each goal: the figure it judges, and the ratio (numerator ÷ denominator) to its target."""
    specs = []
    for name in names:
        bare = f"single/{BARE}/{name}"
        specs.append(("P1", f"{name}, 1 row", f"single/service/{name}", bare, "bare"))
    for name in names:
        for goal, protocol in (("P3 native", NATIVE_LISTS), ("P3 v2 binary", V2_BINARY)):
            label = f"{name}, 1,000 rows, {PROTOCOL_LABELS[protocol]}"
            specs.append((goal, label, f"batch/{protocol}/{name}", f"batch/{BARE}/{name}", "bare"))
    most, fewest = (memory_key(w) for w in (MEMORY_WORKERS[-1], MEMORY_WORKERS[0]))
    specs.append(
        ("P4", f"model-service PSS, {MEMORY_WORKERS[-1]} workers", most, fewest, "1 worker")
    )
    paced = f"paced/service/{IRIS}"
    specs.append(("P5", f"{IRIS} at {PACED_FRACTION:.0%} of P1's rate", paced, "paced/hello", ""))
    for name in MONITORING_OFF_MODELS:
        key = f"single/service/{name}"
        specs.append(("M", f"{name}, monitoring on", key, f"single/monitoring-off/{name}", "off"))
    for name in names:
        peer = f"single/mlflow-serve/{name}"
        if peer in figures:
            specs.append(("MLflow", f"{name}, 1 row", f"single/service/{name}", peer, "MLflow"))

    rows = []
    for goal, label, key, reference_key, of in specs:
        comparison, target = GOALS[goal]
        row = figure_row(figures, key, "goals", label) or Row(key, "goals", label)
        if goal == "P5":
            # The tail's own spread, over the ceiling's paced the same way: what wrk, Nginx
            # and Gunicorn give any handler at 80 % of its rate.
            hello = figures.get(reference_key, {})
            row.ratio = ratio(
                ratio(row.p99_ms, row.p50_ms), ratio(hello.get("p99_ms"), hello.get("p50_ms"))
            )
            of = "hello's p99 ÷ p50"
            if "target_requests_per_s" in row.figures:
                row.label += f", {row.figures['target_requests_per_s']:,.0f} req/s"
        else:
            field = MAIN_FIGURE[key.split("/")[0]][0]
            reference = figures.get(reference_key, {}).get(field)
            row.ratio = ratio(row.figures.get(field), reference)
        row.ratio_of, row.goal, row.target, row.comparison = of, goal, target, comparison
        if row.ratio is not None:
            row.passed = row.ratio >= target if comparison == ">=" else row.ratio <= target
        if goal == "P1":
            row.bound, row.bound_label = p1_bound(figures, key.split("/")[2])
        if goal.startswith("P3"):
            row.bound, row.bound_label = p3_bound(figures, key.split("/")[1], key.split("/")[2])
        if goal == "P4":
            row.bound = p4_bound(figures)
        rows.append(row)
    return rows


def with_round_ratios(goals: list[Row], each_round: list[list[Row]]) -> list[Row]:
    """The goals (of the medians) with each one's ratio and bound in every round."""
    if len(each_round) < 2:
        return goals
    by_round = [{(row.goal, row.key): row for row in rows} for rows in each_round]
    for row in goals:
        found = [rows.get((row.goal, row.key)) for rows in by_round]
        row.round_ratios = [one.ratio if one else None for one in found]
        row.round_bounds = [one.bound if one else None for one in found]
    return goals


def p1_bound(figures: dict[str, dict[str, Any]], name: str) -> tuple[float | None, str]:
    """The most P1 can be with its duties done: the rate of the bare handler doing them
    at their least, over the bare handler's, both measured in this run."""
    bare = figures.get(f"single/{BARE}/{name}", {}).get("requests_per_s")
    duties = figures.get(f"single/{DUTIES}/{name}", {}).get("requests_per_s")
    return ratio(duties, bare), "bound, doing P1's duties"


def p4_bound(figures: dict[str, dict[str, Any]]) -> float | None:
    """The least P4 can be while the stack runs two Gunicorn instances: two masters and
    one worker each (every master holds its own copy of the app), over one worker."""
    workers, instances = TWO_INSTANCE_FLOOR
    floor = figures.get(memory_key(workers, instances), {}).get("total_pss_mib")
    one = figures.get(memory_key(MEMORY_WORKERS[0]), {}).get("total_pss_mib")
    return ratio(floor, one)


def p3_bound(
    figures: dict[str, dict[str, Any]], protocol: str, name: str
) -> tuple[float | None, str]:
    """The most a 1,000-row handler can reach, as a ratio to the bare handler, and what
    says so. It must both take the body in (hello reading it, and parsing it when it is
    JSON) and run the backend, on the same cores, so their times per row add up. A JSON
    answer that carries a classifier's probabilities, as the service's native one does,
    can reach no more than the bare handler answering them too; and a request with P1's
    duties done (validation, metrics, log, monitoring) no more than the bare handler doing
    them at their least on the same body, native or v2 binary: the lowest of these."""
    bare = figures.get(f"batch/{BARE}/{name}", {}).get("rows_per_s")
    intake = "hello-binary" if protocol == V2_BINARY else "hello"
    rates = [
        figures.get(key, {}).get("rows_per_s")
        for key in (f"batch/{intake}/{name}", f"batch/compute-bound/{name}")
    ]
    if not bare:
        return None, "bound"
    bounds = {}
    if all(rates):
        bounds["bound"] = 1.0 / sum(1.0 / rate for rate in rates) / bare
    answering = figures.get(f"batch/{BARE_WITH_PROBABILITIES}/{name}", {}).get("rows_per_s")
    if answering and protocol != V2_BINARY:
        bounds["bound, answering probabilities"] = answering / bare
    # The bare handler doing P1's duties, on the body P3 sends the service: rows of
    # numbers (the bare handler's own body), or the same v2 binary body.
    contender = {NATIVE_LISTS: DUTIES, V2_BINARY: DUTIES_BINARY}.get(protocol)
    duties = figures.get(f"batch/{contender}/{name}", {}).get("rows_per_s")
    if duties:
        bounds["bound, doing P1's duties"] = duties / bare
    if not bounds:
        return None, "bound"
    label = min(bounds, key=bounds.get)
    return bounds[label], label
