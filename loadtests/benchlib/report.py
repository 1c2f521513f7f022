"""A benchmark's output: the table, the JSON file, and the `main` every benchmark script
shares (measure, print, write, exit status)."""

from __future__ import annotations

import collections
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.localstack import StackError

from .rounds import MEMORY_WORKERS
from .rows import SECTIONS
from .settings import BenchError

COLUMNS = (  # (title, width, alignment)
    ("row", 58, "<"),
    ("backend", 12, "<"),
    ("figure", 15, ">"),
    ("p50 ms", 8, ">"),
    ("p99 ms", 8, ">"),
    ("err", 4, ">"),
    ("ratio", 7, ">"),
    (" of", 11, "<"),
    ("target", 8, "<"),
    ("result", 6, "<"),
)
TABLE_WIDTH = sum(width for _, width, _ in COLUMNS)


def format_figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    digits = {"rows/s": 0, "ms": 3}.get(unit, 1)
    return f"{value:,.{digits}f} {unit}"


def format_row(row: dict[str, Any]) -> str:
    def number(value: float | None) -> str:
        if value is None:
            return ""
        return f"{value:,.3f}" if abs(value) < 0.1 else f"{value:,.2f}"

    label = f"{row['goal'].split()[0]:<3}{row['label']}" if row["goal"] else row["label"]
    if row["note"]:
        return f"{label:<{COLUMNS[0][1]}}{row['note']}"
    target = ""
    if row["target"] is not None:
        target = f"{'≥' if row['comparison'] == '>=' else '≤'} {row['target']:g}"
    result = {True: "pass", False: "FAIL", None: "-"}[row["passed"]] if row["goal"] else ""
    if row.get("bound") is not None:
        result += f" ({row.get('bound_label', 'bound')} {row['bound']:.2f})"
    if row.get("round_ratios"):
        result += "; by round " + ", ".join(
            f"{value:.2f}" if value is not None else "-" for value in row["round_ratios"]
        )
    cells = [
        label,
        row["backend"],
        format_figure(row["value"], row["unit"]),
        number(row["p50_ms"]),
        number(row["p99_ms"]),
        "" if row["errors"] is None else str(row["errors"]),
        number(row["ratio"]),
        " " + row["ratio_of"],
        target,
        result,
    ]
    columns = zip(cells, COLUMNS, strict=True)
    return "".join(f"{cell:{align}{width}}" for cell, (_, width, align) in columns).rstrip()


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    front = "Nginx" if s["front"] == "nginx" else "Gunicorn (no Nginx installed)"
    threads = f" × {s['threads']} threads" if s["worker_class"] == "gthread" else ""
    rounds = f"{s['rounds']} round{'s, medians' if s['rounds'] > 1 else ''}"
    lines = [
        f"model-service bench: {front} -> Gunicorn, {s['workers']} {s['worker_class']} workers"
        f"{threads} (P4: 1 and {MEMORY_WORKERS[-1]}), {s['cpus']} CPUs, "
        f"{s['native_threads_per_worker']} native thread(s) per worker; {rounds}; "
        f"{results['elapsed_s']:.0f} s",
        f"load: {results['load_generator']['description']}",
        "",
        "".join(f"{title:{align}{width}}" for title, width, align in COLUMNS).rstrip(),
    ]
    sections: dict[str, list[dict[str, Any]]] = {"goals": results["goals"]}
    for row in results["rows"]:
        sections.setdefault(row["section"], []).append(row)
    for section, title in SECTIONS.items():
        if section in sections:
            heading = f"-- {title.format(front=front)} "
            lines.append(heading + "-" * max(0, TABLE_WIDTH - len(heading)))
            lines += [format_row(row) for row in sections[section]]
    counts = collections.Counter(row["passed"] for row in results["goals"])
    lines += [
        "",
        f"goals: {counts[True]} pass, {counts[False]} fail, {counts[None]} not measured "
        "(figures from one shared machine move between runs; the ratios are the result)",
    ]
    errors = sum(row["errors"] or 0 for row in results["rows"])
    if errors:
        lines.append(f"WARNING: {errors} requests failed under load; the figures are suspect.")
    return "\n".join(lines)


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {path}")


def _exit_on_sigterm(signum, _frame) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop the stacks.
    raise SystemExit(128 + signum)


def report(
    name: str,
    measure: Callable[[], dict[str, Any]],
    render_results: Callable[[dict[str, Any]], str],
    json_path: Path | None,
    failed: Callable[[dict[str, Any]], bool],
) -> int:
    """A benchmark script's main: measure, print the table, write the JSON; exit status 1
    on an error or when ``failed`` says requests failed (figures are reported, not
    enforced)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        results = measure()
    except (BenchError, StackError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    print(render_results(results))
    write_json(json_path, results)
    return 1 if failed(results) else 0
