"""Load test for any model-service deployment.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080
    locust -f loadtests/locustfile.py --host URL --headless -u 20 -r 20 --run-time 60s \\
        --models iris-classifier,diabetes-regressor --batch-size 100 --batch-share 0.2 \\
        --invalid-share 0.05

When a test starts, every load generator asks the deployment what it serves
(GET /v1/models) and reads the metadata of each served version. Rows are drawn
from each feature's training statistics: a histogram bin chosen by its count,
then a value within that bin (clamped to the training min..max); int64 features
get whole numbers and category features one of the categories the model knows.

Each request is one of:
  - a single-row prediction, or a batch of --batch-size rows (--batch-share of
    the valid requests): a success only when the answer is a 200 whose
    "predictions" list has one entry per row;
  - an invalid request (--invalid-share of all requests): a row with the wrong
    number of features, a string where a number belongs, or a model that does
    not exist. These count as successes only when answered with a 4xx.

Statistics are named "/v1/models/<name>/predict [N rows]" for valid requests
and "... [invalid: <kind>]" for invalid ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
from typing import Any

# locust before requests: importing locust lets gevent patch the standard library,
# which has to happen before requests (through urllib3) imports ssl.
import locust  # noqa: F401
import requests
from locust import FastHttpUser, events, task
from locust.exception import StopTest
from locust.runners import MasterRunner

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
# Bodies are built once per test so the load generator spends its CPU on
# sending requests, not on drawing random rows (it often shares the machine).
SINGLE_ROW_BODIES = 256
BATCH_BODIES = 16
CATALOGUE_TIMEOUT_S = 15.0
# The service accepts at most this many instances per request (Settings.max_instances).
MAX_BATCH_SIZE = 10_000
UNKNOWN_MODEL = "locust-no-such-model"
NOT_A_NUMBER = "not-a-number"

INVALID_WRONG_FEATURE_COUNT = "wrong feature count"
INVALID_STRING_FOR_NUMBER = "string for a number"
INVALID_UNKNOWN_MODEL = "unknown model"


# --- options -----------------------------------------------------------------


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share is between 0 and 1, got {text}")
    return value


def _batch_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"the batch size is 1..{MAX_BATCH_SIZE}, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 60.0:
        raise argparse.ArgumentTypeError(f"the think time is 0..60 seconds, got {text}")
    return value


@events.init_command_line_parser.add_listener
def add_options(parser, **_kwargs) -> None:
    parser.add_argument(
        "--models",
        default="",
        env_var="LOCUST_MODELS",
        help="Comma-separated model names to load (default: every served model).",
    )
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=100,
        env_var="LOCUST_BATCH_SIZE",
        help="Rows in one batch prediction (default 100).",
    )
    parser.add_argument(
        "--batch-share",
        type=_share,
        default=0.2,
        env_var="LOCUST_BATCH_SHARE",
        help="Share of the valid requests that are batches (default 0.2).",
    )
    parser.add_argument(
        "--invalid-share",
        type=_share,
        default=0.05,
        env_var="LOCUST_INVALID_SHARE",
        help="Share of all requests that are invalid and must get a 4xx (default 0.05).",
    )
    parser.add_argument(
        "--think-time",
        type=_seconds,
        default=0.1,
        env_var="LOCUST_THINK_TIME",
        help="Each user waits a random 0..SECONDS between requests (default 0.1; "
        "0 sends back to back).",
    )


# --- the served models and their payloads ------------------------------------


class CatalogueError(Exception):
    pass


@dataclasses.dataclass
class ServedModel:
    name: str
    version: int
    features: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    single_bodies: list[bytes]
    batch_bodies: list[bytes]
    batch_size: int

    @property
    def path(self) -> str:
        return f"/v1/models/{self.name}/predict"

    def numeric_feature_names(self) -> list[str]:
        return [f["name"] for f in self.features if f["dtype"] != "category"]


# Filled by read_served_models() when a test starts, read by every user.
SERVED_MODELS: list[ServedModel] = []


def sample_value(feature: dict[str, Any], rng: random.Random) -> Any:
    if feature["dtype"] == "category":
        return rng.choice(list(feature["categories"]))
    stats = feature.get("stats") or {}
    low = float(stats.get("min", 0.0))
    high = float(stats.get("max", low))
    histogram = stats.get("histogram") or {}
    edges, counts = histogram.get("edges") or [], histogram.get("counts") or []
    if len(edges) == len(counts) + 1 and sum(counts) > 0:
        (index,) = rng.choices(range(len(counts)), weights=counts)
        value = rng.uniform(edges[index], edges[index + 1])
    else:
        value = rng.uniform(low, high)
    value = min(max(value, low), high)
    if feature["dtype"] == "int64":
        return min(max(round(value), math.ceil(low)), math.floor(high))
    return round(value, 6)


def sample_row(features: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    return {feature["name"]: sample_value(feature, rng) for feature in features}


def instances_body(rows: list[Any]) -> bytes:
    return json.dumps({"instances": rows}).encode()


def build_served_model(
    name: str, version: int, metadata: dict[str, Any], batch_size: int, rng: random.Random
) -> ServedModel:
    features = metadata["input"]["features"]
    if not features:
        raise CatalogueError(f"{name}@{version}: the metadata lists no input features")
    for feature in features:
        if feature["dtype"] == "category" and not feature.get("categories"):
            raise CatalogueError(
                f"{name}@{version}: category feature {feature['name']!r} lists no categories"
            )
    rows = [sample_row(features, rng) for _ in range(SINGLE_ROW_BODIES)]
    batches = [
        instances_body([sample_row(features, rng) for _ in range(batch_size)])
        for _ in range(BATCH_BODIES)
    ]
    return ServedModel(
        name=name,
        version=version,
        features=features,
        rows=rows,
        single_bodies=[instances_body([row]) for row in rows],
        batch_bodies=batches,
        batch_size=batch_size,
    )


def read_served_models(host: str, options: argparse.Namespace) -> list[ServedModel]:
    wanted = [name.strip() for name in (options.models or "").split(",") if name.strip()]
    rng = random.Random()
    with requests.Session() as session:

        def get_json(path: str) -> Any:
            response = session.get(host.rstrip("/") + path, timeout=CATALOGUE_TIMEOUT_S)
            if response.status_code != 200:
                raise CatalogueError(f"GET {path} answered {response.status_code}")
            return response.json()

        listing = get_json("/v1/models")["models"]
        serving = {m["name"]: m["serving_version"] for m in listing if m.get("serving_version")}
        names = wanted or sorted(serving)
        missing = [name for name in names if name not in serving]
        if missing:
            raise CatalogueError(
                f"not served: {', '.join(missing)}; served: {', '.join(sorted(serving)) or 'none'}"
            )
        if not names:
            raise CatalogueError("the deployment serves no models")
        served = []
        for name in names:
            version = serving[name]
            metadata = get_json(f"/v1/models/{name}/versions/{version}")["metadata"]
            served.append(build_served_model(name, version, metadata, options.batch_size, rng))
    return served


@events.test_start.add_listener
def load_served_models(environment, **_kwargs) -> None:
    # The master of a distributed run starts no users; each worker reads the models itself.
    if isinstance(environment.runner, MasterRunner):
        return
    SERVED_MODELS.clear()
    if not environment.host:
        log.error("no --host given: nothing to load test")
        environment.process_exit_code = 1
        return
    try:
        SERVED_MODELS.extend(read_served_models(environment.host, environment.parsed_options))
    except (requests.RequestException, CatalogueError, ValueError, KeyError, TypeError) as exc:
        log.error("cannot read the served models from %s: %s", environment.host, exc)
        environment.process_exit_code = 1
        return
    log.info(
        "load testing %s",
        ", ".join(f"{m.name}@{m.version} ({len(m.features)} features)" for m in SERVED_MODELS),
    )


# --- the user ----------------------------------------------------------------


def _error_code(response) -> str:
    """The service's error code, to keep failure messages few and groupable."""
    try:
        return str(json.loads(response.content)["error"]["code"])
    except (TypeError, ValueError, KeyError):
        return "no error code"


class ModelServiceUser(FastHttpUser):
    def wait_time(self) -> float:
        return random.uniform(0.0, self.environment.parsed_options.think_time)

    def on_start(self) -> None:
        if not SERVED_MODELS:
            raise StopTest("no served models to load test (see the error logged at test start)")
        self.options = self.environment.parsed_options

    @task
    def predict(self) -> None:
        model = random.choice(SERVED_MODELS)
        if random.random() < self.options.invalid_share:
            self.send_invalid(model)
        elif random.random() < self.options.batch_share:
            self.send_valid(model, random.choice(model.batch_bodies), model.batch_size)
        else:
            self.send_valid(model, random.choice(model.single_bodies), 1)

    def send_valid(self, model: ServedModel, body: bytes, rows: int) -> None:
        label = f"{model.path} [{rows} {'row' if rows == 1 else 'rows'}]"
        with self.client.post(
            model.path, data=body, headers=JSON_HEADERS, name=label, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(
                    f"expected 200, got {response.status_code} ({_error_code(response)})"
                )
                return
            try:
                predictions = json.loads(response.content)["predictions"]
            except (TypeError, ValueError, KeyError):
                response.failure("the 200 answer has no predictions")
                return
            if not isinstance(predictions, list) or len(predictions) != rows:
                count = len(predictions) if isinstance(predictions, list) else "no"
                response.failure(f"expected {rows} predictions, got {count}")
                return
            response.success()

    def send_invalid(self, model: ServedModel) -> None:
        kinds = [INVALID_WRONG_FEATURE_COUNT, INVALID_UNKNOWN_MODEL]
        if model.numeric_feature_names():
            kinds.append(INVALID_STRING_FOR_NUMBER)
        kind = random.choice(kinds)
        row = random.choice(model.rows)
        path = model.path
        if kind == INVALID_WRONG_FEATURE_COUNT:
            values = list(row.values())
            # One value short, or one too many when the model takes a single feature.
            values = values[:-1] if len(values) > 1 else [*values, 0.0]
            body = instances_body([values])
        elif kind == INVALID_STRING_FOR_NUMBER:
            name = random.choice(model.numeric_feature_names())
            body = instances_body([{**row, name: NOT_A_NUMBER}])
        else:
            path = f"/v1/models/{UNKNOWN_MODEL}/predict"
            body = instances_body([row])
        label = f"{path} [invalid: {kind}]"
        with self.client.post(
            path, data=body, headers=JSON_HEADERS, name=label, catch_response=True
        ) as response:
            if 400 <= response.status_code < 500:
                response.success()
            else:
                response.failure(f"expected a 4xx, got {response.status_code}")
