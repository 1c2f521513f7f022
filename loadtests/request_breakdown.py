"""What a 1,000-row request costs inside the worker, stage by stage.

For each demo model, one native JSON request of 1,000 rows (lists, in feature order) is
timed whole through the service's WSGI app in process (no sockets, as
``request_cost.py`` does), and each stage of it alone, through the service's own
functions on the same body:

  parse          the JSON body (``protocols.native.parse_json``)
  validation     instances out of it, checked into a float matrix (``LoadedModel.validate``)
  backend        the compiled model's run, labels only
  probabilities  what asking for probabilities adds to the run and its outputs
  <observer>     each of the registry's prediction observers (metrics; monitoring: drift
                 binning per row, the prediction log and the host's state, which its
                 thread writes, timed with its flush; experiments; shadow), on this
                 request's event
  encoding       the answer to JSON bytes (``api.json_response``)
  gzip           what Nginx's gzip (deploy/nginx.conf: on for JSON over 1 KiB, level 1)
                 costs for the answer, when the client accepts it
  rest           the whole minus the stages: Flask, routing, request ids, metrics and the
                 request log, the body's intake

Each is the median over repeats within a time budget, in milliseconds. Under load the
same stages cost more (the caches are shared with Nginx and the load generator); the
benchmark's 1,000-row rows give that side: hello reading the body, hello parsing it, the
bare onnxruntime handler, and the service.

    .venv/bin/python loadtests/request_breakdown.py [--store DIR] [--budget 1.0] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from loadtests.request_cost import environ, worker_like_scratch  # noqa: E402

ROWS = 1000
# Nginx's gzip_comp_level when the configuration leaves it out.
NGINX_GZIP_LEVEL = 1


def median_ms(call: Callable[[], Any], budget: float) -> float:
    call()  # warm
    times = []
    deadline = time.perf_counter() + budget
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 2000):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def gzip_ms(body: bytes, budget: float) -> float:
    def compress() -> bytes:
        packer = zlib.compressobj(NGINX_GZIP_LEVEL, zlib.DEFLATED, 31)
        return packer.compress(body) + packer.flush()

    return median_ms(compress, budget)


def breakdown(store_dir: Path, state_dir: Path, budget: float) -> dict[str, dict[str, float]]:
    from service import create_app
    from service.store import ModelRef, ModelStore

    store = ModelStore(store_dir)
    app = create_app({"store": str(store_dir), "state_dir": str(state_dir)})
    service = app.extensions["model_service"]
    results: dict[str, dict[str, float]] = {}
    try:
        for name in sorted(store.names()):
            model = service.registry.get(ModelRef(name, alias="production"))
            golden = store.metadata(name, model.version)["golden"]["instances"]
            rows = [list(golden[i % len(golden)]) for i in range(ROWS)]
            body = json.dumps({"instances": rows}).encode()
            results[name] = stages_of(app, model, body, budget)
    finally:
        app.extensions["model_service.monitoring"].stop()
        service.registry.stop()
    return results


def stages_of(app: Any, model: Any, body: bytes, budget: float) -> dict[str, float]:
    from service.api import json_response
    from service.protocols import native
    from service.runtime import hooks

    path = f"/v1/models/{model.name}/predict"

    def whole() -> None:
        b"".join(app(environ(path, body), lambda *_: None))

    stages = {"whole": median_ms(whole, budget)}
    stages["parse"] = median_ms(lambda: native.parse_json(body), budget)
    instances = native.parse_json(body)["instances"]
    booleans = native.may_hold_booleans(body)
    stages["validation"] = median_ms(
        lambda: model.validate(instances, may_hold_booleans=booleans), budget
    )
    values = model.validate(instances, may_hold_booleans=booleans)
    labels = median_ms(lambda: model.predict_prepared(values, with_proba=False), budget)
    both = median_ms(lambda: model.predict_prepared(values), budget)
    stages["backend"] = labels
    stages["probabilities"] = max(both - labels, 0.0)
    prediction = model.predict_prepared(values)
    event = hooks.PredictionEvent(model, values, prediction, "breakdown", 0.001)
    for observer in list(model.observers or ()):
        owner = getattr(observer, "__self__", None)
        label = type(owner).__name__ if owner is not None else observer.__name__
        if callable(getattr(owner, "flush", None)):
            # A buffered writer: the request only appends; its thread does the work (drift
            # binning per row, the prediction log, the host's state) while later requests
            # wait for the GIL. Both, per request.
            label += " + flush"

            def observe(o=observer, flush=owner.flush) -> None:
                o(event)
                flush()

        else:
            observe = functools.partial(observer, event)
        stages[f"observer {label}"] = median_ms(observe, budget)
    answer = native.encode_prediction(model, prediction, "breakdown")
    stages["encoding"] = median_ms(lambda: json_response(answer), budget)
    encoded = json_response(answer).get_data()
    stages["gzip"] = gzip_ms(encoded, budget)
    inside = sum(v for k, v in stages.items() if k not in ("whole", "gzip"))
    stages["rest"] = max(stages["whole"] - inside, 0.0)
    stages["answer KiB"] = len(encoded) / 1024
    return stages


def render(results: dict[str, dict[str, float]]) -> str:
    lines = [f"What a {ROWS:,}-row native JSON request costs in one worker, in process (ms)"]
    for name, stages in results.items():
        whole = stages["whole"]
        lines.append(f"{name}: {whole:.2f} ms whole; answer {stages['answer KiB']:.0f} KiB")
        for stage, ms in stages.items():
            if stage in ("whole", "answer KiB"):
                continue
            share = f"{ms / whole:>6.1%}" if stage != "gzip" else "  (+ Nginx)"
            lines.append(f"  {stage:<44}{ms:>8.3f} {share}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a store with the demo models (default: train)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per stage")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    with worker_like_scratch("request-breakdown-", args.store) as (root, store_dir):
        results = breakdown(store_dir, root / "state", args.budget)
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
