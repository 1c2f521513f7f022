"""MLflow's scoring formats through Nginx and Gunicorn, sent the way an MLflow user sends
them with ``requests``: DataFrames as dataframe_split / dataframe_records JSON, or as CSV."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import requests

from service.runtime.model import load
from service.store import ModelStore
from tests.outputs import same_as
from tests.support import DEMO_MODELS, IRIS, IRIS_EXPECTED, IRIS_FEATURES, IRIS_ROWS, running_stack
from tests.test_mlflow import BAD_REQUESTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_stack(trained_store_dir, tmp_path_factory):
    """The stack with /invocations serving iris-classifier's production version."""
    env = {
        "MODEL_SERVICE_RELOAD_INTERVAL": "0.2",
        "MODEL_SERVICE_DEFAULT_MODEL": f"{IRIS}@production",
    }
    with running_stack(
        tmp_path_factory.mktemp("mlflow-stack"), store_from=trained_store_dir, env=env
    ) as started:
        yield started


def frame_of(store, name: str) -> tuple[pd.DataFrame, list]:
    model = load(ModelStore(store), name, 1)
    rows = np.asarray(model.metadata["golden"]["instances"], dtype=float)
    frame = pd.DataFrame(rows, columns=list(model.schema.names))
    for feature in model.schema.features:
        if feature.dtype == "int64":
            frame[feature.name] = frame[feature.name].astype("int64")
    expected = model.estimator.predict(frame if model._feature_names is not None else rows)
    return frame, expected.tolist()


def test_invocations_with_a_dataframe_as_an_mlflow_user_sends_it(mlflow_stack):
    url = mlflow_stack.url
    df = pd.DataFrame(IRIS_ROWS, columns=IRIS_FEATURES)

    split = requests.post(
        url + "/invocations", json={"dataframe_split": df.to_dict(orient="split")}
    )
    records = requests.post(
        url + "/invocations", json={"dataframe_records": df.to_dict(orient="records")}
    )
    as_csv = requests.post(
        url + "/invocations", data=df.to_csv(index=False), headers={"Content-Type": "text/csv"}
    )
    inputs = requests.post(url + "/invocations", json={"inputs": df.values.tolist()})

    for response in (split, records, as_csv, inputs):
        assert response.status_code == 200, response.text
        assert response.headers["Server"].startswith("nginx")
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json() == {"predictions": IRIS_EXPECTED}


@pytest.mark.parametrize("name", DEMO_MODELS)
@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "csv"])
def test_every_model_through_nginx_equals_in_process(mlflow_stack, name, form):
    df, expected = frame_of(mlflow_stack.store, name)
    url = f"{mlflow_stack.url}/v1/models/{name}/invocations"
    if form == "csv":
        response = requests.post(
            url, data=df.to_csv(index=False), headers={"Content-Type": "text/csv"}
        )
    else:
        orient = form.removeprefix("dataframe_")
        response = requests.post(url, json={form: df.to_dict(orient=orient)})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == same_as(expected)


@pytest.mark.parametrize("path", ["/ping", "/health"])
def test_ping_and_health(mlflow_stack, path):
    response = requests.get(mlflow_stack.url + path)
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_invocations_without_a_default_model_says_how_to_set_it(stack):
    """The shared stack serves three models and sets no default."""
    response = requests.post(stack.url + "/invocations", json={"instances": IRIS_ROWS})
    assert response.status_code == 409
    assert response.json()["error_code"] == "RESOURCE_CONFLICT"
    assert "MODEL_SERVICE_DEFAULT_MODEL" in response.json()["message"]
    per_model = requests.post(
        f"{stack.url}/v1/models/{IRIS}/invocations", json={"instances": IRIS_ROWS}
    )
    assert per_model.json() == {"predictions": IRIS_EXPECTED}
    assert requests.get(stack.url + "/ping").status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error_code", "fragment"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_mistakes_through_nginx(mlflow_stack, body, content_type, status, error_code, fragment):
    workers_before = sorted(mlflow_stack.worker_pids())
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = requests.post(
        mlflow_stack.url + "/invocations",
        data=data,
        headers={"Content-Type": content_type or "application/json"},
    )
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    answer = response.json()
    assert answer["error_code"] == error_code
    assert fragment in answer["message"]
    assert sorted(mlflow_stack.worker_pids()) == workers_before
