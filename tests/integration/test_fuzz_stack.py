"""Schemathesis against the real stack (Nginx -> Gunicorn, two workers, a private copy of
the demo store): every operation of the stack's own /openapi.json, every check. No scope is
left open, so every route but the health ones needs a key: the fuzzer sends one granting
every scope, and its ignored_auth check sends each secured operation without it and with a
wrong one. The run is derandomized, so a failure found once is found again, and bounded by
examples per operation and a wall time limit.

Run it alone with ``.venv/bin/pytest tests/integration/test_fuzz_stack.py -q -s``; the counts
(operations, test cases, failures) are printed and kept in the JSON report next to the
JUnit one under pytest's temporary directory. MODEL_SERVICE_FUZZ_EXAMPLES sets the examples
per operation of the fuzzing phase (default 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.keys import SCOPES, KeyRing
from service.localstack import LocalStack
from tests.support import running_stack

pytestmark = pytest.mark.integration

# Random cases per operation in the fuzzing phase; the coverage phase, which walks every
# boundary and negation of the schemas, ignores this bound and takes most of the time.
MAX_EXAMPLES = int(os.environ.get("MODEL_SERVICE_FUZZ_EXAMPLES", "5"))
WALL_TIME_LIMIT = 300
# A model card's first render (matplotlib, per worker) takes seconds, and the machine the
# tests share may be busy: the response-time check (10 s by default) allows 30 s, and a
# request is given up after 45 s.
MAX_RESPONSE_TIME = 30
REQUEST_TIMEOUT = 45
# What the checks expect besides schemathesis's defaults, and why:
# - 413 rejects schema-violating data too: more instances than max_instances (maxItems).
# - The prediction operations whose schema is the same for every model (the generic native
#   path, Open Inference Protocol v2, MLflow) describe a well-formed request; whether its
#   tensors, columns or features fit the model named in the path is for that model to say:
#   400 (v2's and MLflow's codes for it) or 422. A typed per-model path describes the
#   model's features exactly, yet values far outside any training range can still overflow
#   the model's arithmetic: 422 non_finite_output.
# - A well-formed experiment start can still be refused: weights that do not add up to 100
#   (400), a version or alias the model lacks (404), an experiment running already (409);
#   and a well-formed conclude: a winner that is not a variant of the running experiment
#   (400), no experiment running (404), nothing significant yet (409).
SCHEMATHESIS_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429", "5xx"]

[[operations]]
include-operation-id-regex = "^(predict|v2_(version_)?infer|mlflow_(model_)?invocations)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404",
                                                     "409", "422", "429", "5xx"]

[[operations]]
include-operation-id-regex = "^experiment_(start|conclude)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404",
                                                     "409", "429", "5xx"]

[[operations]]
include-operation-id-regex = "^predict_"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409",
                                                     "422", "429", "5xx"]
"""


@pytest.fixture(scope="module")
def fuzzed_stack(trained_store_dir, tmp_path_factory):
    """The stack and a key granting every scope."""
    keys = []

    def create_key(stack: LocalStack) -> None:
        keys.append(KeyRing(stack.store).create("fuzzer", SCOPES))

    # The coverage phase sends bodies at the schemas' bounds: 100 instances instead of
    # 10,000 keep those bodies small (the document's maxItems follows the setting).
    env = {"MODEL_SERVICE_OPEN_SCOPES": "", "MODEL_SERVICE_MAX_INSTANCES": "100"}
    with running_stack(
        tmp_path_factory.mktemp("fuzz"),
        store_from=trained_store_dir,
        env=env,
        before_start=create_key,
    ) as stack:
        yield stack, keys[0]


def schemathesis_command(url: str, key: str, reports: Path, config: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {key}",
        "--max-examples",
        str(MAX_EXAMPLES),
        # Derandomized (and so no example database): the same cases at every run.
        "--generation-deterministic",
        # One worker: the shared machine has two cores, and the stack needs them.
        "--workers",
        "1",
        "--max-response-time",
        str(MAX_RESPONSE_TIME),
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--wait-for-schema",
        "30",
        "--report",
        "json,junit",
        "--report-dir",
        str(reports),
        "--report-json-path",
        str(reports / "run.json"),
        "--report-junit-path",
        str(reports / "junit.xml"),
        "--no-color",
    ]


def test_schemathesis_finds_nothing(fuzzed_stack, tmp_path):
    stack, key = fuzzed_stack
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    reports = tmp_path / "reports"
    command = schemathesis_command(stack.url, key, reports, config)
    started = time.monotonic()
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=WALL_TIME_LIMIT, cwd=tmp_path
    )
    elapsed = time.monotonic() - started
    output = finished.stdout + finished.stderr
    assert (reports / "run.json").exists(), output[-4000:]
    report = json.loads((reports / "run.json").read_text())
    operations = report["operations"]
    cases = report["test_cases"]
    failures = sum(group["count"] for group in report["failures"])
    errors = sum(group["count"] for group in report["errors"])
    print(
        f"\nschemathesis: {operations['tested']}/{operations['selected']} operations, "
        f"{cases['generated']} test cases, {failures} failures, {errors} errors, "
        f"{elapsed:.0f} s; reports in {reports}"
    )
    assert report["complete"], output[-4000:]
    assert operations["tested"] == operations["selected"] > 0
    assert cases["generated"] > 10 * operations["selected"]
    assert (failures, errors) == (0, 0), output[-12000:]
    assert finished.returncode == 0, output[-4000:]
