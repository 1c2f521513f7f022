"""MLflow's scoring formats through Flask's test client: every format gives the native
API's predictions, /invocations serves the default model, /ping and /health report
readiness, and every mistake gets our 4xx in MLflow's error shape."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from service import create_app
from service.config import Settings
from service.protocols import mlflow as codec
from service.runtime.model import load
from service.runtime.schema import FeatureSpec, InputSchema
from service.store import ModelStore
from tests.outputs import same_as
from tests.support import DEMO_MODELS, DIABETES, IRIS, IRIS_EXPECTED, IRIS_FEATURES, IRIS_ROWS


@pytest.fixture
def make_client(store_dir):
    """A test client of an app with these setting overrides."""
    apps = []

    def make(**overrides):
        app = create_app({"store": store_dir, "reload_interval": 0.1, **overrides})
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["model_service"].registry.stop()


def invoke(client, body, path=f"/v1/models/{IRIS}/invocations", content_type=None):
    if isinstance(body, (bytes, str)):
        return client.post(path, data=body, content_type=content_type or "application/json")
    return client.post(path, data=json.dumps(body), content_type="application/json")


def model_frame(store_dir, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows around the model's golden example, as a DataFrame with its feature dtypes, and
    what the estimator itself predicts for them in process."""
    model = load(ModelStore(store_dir), name, 1)
    rows = np.asarray(model.metadata["golden"]["instances"], dtype=float)
    rng = np.random.default_rng(1)
    rows = np.vstack([rows, rows * rng.uniform(0.9, 1.1, size=rows.shape)])
    frame = pd.DataFrame(rows, columns=list(model.schema.names))
    for feature in model.schema.features:
        if feature.dtype == "int64":
            frame[feature.name] = frame[feature.name].round().astype("int64")
    return frame, model.estimator.predict(frame if model._feature_names is not None else rows)


def native_predictions(client, name, frame):
    response = client.post(
        f"/v1/models/{name}/predict", json={"instances": frame.to_dict(orient="records")}
    )
    assert response.status_code == 200, response.json
    return response.json["predictions"]


# -- each format gives the native API's answer ----------------------------------------


def _bodies(frame: pd.DataFrame) -> dict[str, tuple[object, str]]:
    shuffled = frame[list(reversed(frame.columns))]
    return {
        "dataframe_split": ({"dataframe_split": frame.to_dict(orient="split")}, "json"),
        "dataframe_split, columns reordered": (
            {"dataframe_split": shuffled.to_dict(orient="split")},
            "json",
        ),
        "dataframe_split without index": (
            {"dataframe_split": frame.to_dict(orient="split", index=False)},
            "json",
        ),
        "dataframe_records": ({"dataframe_records": frame.to_dict(orient="records")}, "json"),
        "instances as rows": ({"instances": frame.values.tolist()}, "json"),
        "instances as objects": ({"instances": shuffled.to_dict(orient="records")}, "json"),
        "inputs as rows": ({"inputs": frame.values.tolist()}, "json"),
        "inputs as columns": ({"inputs": shuffled.to_dict(orient="list")}, "json"),
        "params ignored": (
            {"dataframe_split": frame.to_dict(orient="split"), "params": {"top_k": 2}},
            "json",
        ),
        "csv": (frame.to_csv(index=False), "csv"),
        "csv, columns reordered": (shuffled.to_csv(index=False), "csv"),
    }


FORMAT_NAMES = list(_bodies(pd.DataFrame({"a": [1]})))


@pytest.mark.parametrize("name", DEMO_MODELS)
@pytest.mark.parametrize("form", FORMAT_NAMES)
def test_every_format_gives_the_native_predictions(client, store_dir, name, form):
    frame, in_process = model_frame(store_dir, name)
    # diabetes rows hold Python ints for age and sex: values must keep their types.
    body, kind = _bodies(frame)[form]
    if kind == "csv":
        response = invoke(client, body, f"/v1/models/{name}/invocations", "text/csv")
    else:
        response = invoke(client, body, f"/v1/models/{name}/invocations")

    assert response.status_code == 200, response.json
    assert response.mimetype == "application/json"
    assert list(response.json) == ["predictions"]
    predictions = response.json["predictions"]
    assert predictions == native_predictions(client, name, frame)
    assert predictions == same_as(in_process)
    if name == DIABETES:
        assert all(isinstance(p, float) for p in predictions)
    else:
        assert all(isinstance(p, (str, int)) for p in predictions)


def test_iris_labels_are_class_names(client):
    body = {"dataframe_split": {"columns": IRIS_FEATURES, "data": IRIS_ROWS}}
    assert invoke(client, body).json == {"predictions": IRIS_EXPECTED}


def test_a_single_row_as_an_object_of_values(client):
    row = dict(zip(IRIS_FEATURES, IRIS_ROWS[1], strict=True))
    assert invoke(client, {"inputs": row}).json == {"predictions": ["virginica"]}


def test_dataframe_split_without_columns_is_in_feature_order(client):
    assert invoke(client, {"dataframe_split": {"data": IRIS_ROWS}}).json == {
        "predictions": IRIS_EXPECTED
    }
    too_short = invoke(client, {"dataframe_split": {"data": [IRIS_ROWS[0][:3]]}})
    assert too_short.status_code == 422
    assert too_short.json["message"] == "instance 0: has 3 values, the model takes 4"


def test_params_are_ignored_with_a_warning_naming_them(client, caplog):
    body = {"instances": IRIS_ROWS, "params": {"temperature": 0.5}}
    with caplog.at_level(logging.WARNING, logger="service.protocols.mlflow"):
        response = invoke(client, body)
    assert response.json == {"predictions": IRIS_EXPECTED}
    assert "ignored: ['temperature']" in caplog.text
    assert "0.5" not in caplog.text  # names only, never values


def test_version_and_alias_in_the_path(client, store):
    store.promote(IRIS, 1, alias="staging")
    for ref in (f"{IRIS}@1", f"{IRIS}@staging"):
        response = invoke(client, {"instances": IRIS_ROWS}, f"/v1/models/{ref}/invocations")
        assert response.json == {"predictions": IRIS_EXPECTED}


def test_charset_utf8_is_accepted(client):
    response = invoke(
        client,
        "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n5.1,3.5,1.4,0.2\n",
        content_type="text/csv; charset=utf-8",
    )
    assert response.json == {"predictions": ["setosa"]}


# -- /invocations and the default model ---------------------------------------------------


def test_invocations_without_a_default_and_several_models_is_409(client):
    response = invoke(client, {"instances": IRIS_ROWS}, "/invocations")
    assert response.status_code == 409
    assert response.json["error_code"] == "RESOURCE_CONFLICT"
    assert "MODEL_SERVICE_DEFAULT_MODEL" in response.json["message"]
    assert response.json["details"]["models"] == sorted(DEMO_MODELS)


@pytest.mark.parametrize("default", [IRIS, f"{IRIS}@production", f"{IRIS}@1"])
def test_invocations_serves_the_default_model(make_client, default):
    client = make_client(default_model=default)
    response = invoke(client, {"instances": IRIS_ROWS}, "/invocations")
    assert response.status_code == 200, response.json
    assert response.json == {"predictions": IRIS_EXPECTED}


def test_invocations_serves_the_only_served_model(make_client, store_dir):
    client = make_client(models=(DIABETES,))
    frame, in_process = model_frame(store_dir, DIABETES)
    response = invoke(client, {"dataframe_split": frame.to_dict(orient="split")}, "/invocations")
    assert response.status_code == 200, response.json
    assert response.json["predictions"] == same_as(in_process)


@pytest.mark.parametrize(
    ("default", "status", "error_code", "fragment"),
    [
        ("no-such-model", 404, "RESOURCE_DOES_NOT_EXIST", "no model named 'no-such-model'"),
        (f"{IRIS}@7", 404, "RESOURCE_DOES_NOT_EXIST", "has no version 7"),
        (f"{IRIS}@canary", 404, "RESOURCE_DOES_NOT_EXIST", "has no alias 'canary'"),
    ],
)
def test_a_default_model_that_does_not_exist(make_client, default, status, error_code, fragment):
    client = make_client(default_model=default)
    response = invoke(client, {"instances": IRIS_ROWS}, "/invocations")
    assert response.status_code == status
    assert response.json["error_code"] == error_code
    assert fragment in response.json["message"]
    # The same model is not ready for /ping either.
    ping = client.get("/ping")
    assert ping.status_code == 503
    assert ping.json["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert fragment in ping.json["message"]


def test_invocations_with_no_model_served(tmp_path):
    app = create_app({"store": tmp_path / "empty-store"})
    client = app.test_client()
    response = invoke(client, {"instances": IRIS_ROWS}, "/invocations")
    assert response.status_code == 404
    assert response.json["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "no model is served" in response.json["message"]
    assert client.get("/ping").status_code == 503
    app.extensions["model_service"].registry.stop()


def test_default_model_setting():
    assert Settings.load(environ={}).default_model == ""
    environ = {"MODEL_SERVICE_DEFAULT_MODEL": "iris-classifier@production"}
    assert Settings.load(environ=environ).default_model == "iris-classifier@production"
    assert Settings.load(overrides={"default_model": "iris-classifier@2"}, environ={})
    for bad in ("Iris", "iris-classifier@", "iris@Production", "a b"):
        with pytest.raises(ValueError, match="setting default_model: invalid"):
            Settings.load(environ={"MODEL_SERVICE_DEFAULT_MODEL": bad})


# -- /ping and /health ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ping", "/health"])
def test_ping_and_health_answer_200_when_ready(client, make_client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "ready"}
    assert make_client(default_model=IRIS).get(path).status_code == 200


@pytest.mark.parametrize("path", ["/ping", "/health"])
def test_ping_and_health_answer_503_when_a_model_cannot_load(store_dir, path):
    (store_dir / IRIS / "1" / "model.pkl").write_bytes(b"tampered")
    app = create_app({"store": store_dir})
    response = app.test_client().get(path)
    assert response.status_code == 503
    assert response.json["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert IRIS in response.json["message"]
    assert response.json["details"]["models"][IRIS]["ready"] is False
    assert "sha256" in response.json["details"]["models"][IRIS]["error"]
    app.extensions["model_service"].registry.stop()


# -- mistakes: our statuses, MLflow's error shape ------------------------------------------

CSV_HEADER = ",".join(IRIS_FEATURES)
SPLIT = {"columns": IRIS_FEATURES, "data": IRIS_ROWS}

BAD_REQUESTS = [
    # (id, body, content type, status, error_code, message fragment)
    (
        "two formats",
        {"dataframe_split": SPLIT, "instances": IRIS_ROWS},
        None,
        400,
        "BAD_REQUEST",
        "exactly one of the input fields",
    ),
    ("no format", {"rows": IRIS_ROWS}, None, 400, "BAD_REQUEST", "exactly one of the input"),
    ("only params", {"params": {}}, None, 400, "BAD_REQUEST", "exactly one of the input"),
    ("a list body", IRIS_ROWS, None, 400, "BAD_REQUEST", "received a list"),
    ("malformed JSON", b'{"instances": [[5.1, 3.5,', None, 400, "BAD_REQUEST", "not valid JSON"),
    ("empty body", b"", None, 400, "BAD_REQUEST", "empty"),
    (
        "unknown field next to a format",
        {"instances": IRIS_ROWS, "param": {}},
        None,
        400,
        "BAD_REQUEST",
        "unexpected fields ['param']",
    ),
    (
        "split without data",
        {"dataframe_split": {"columns": IRIS_FEATURES}},
        None,
        400,
        "BAD_REQUEST",
        'no "data"',
    ),
    (
        "split row of the wrong length",
        {"dataframe_split": {"columns": IRIS_FEATURES, "data": [[5.1, 3.5, 1.4]]}},
        None,
        400,
        "BAD_REQUEST",
        "row 0 has 3 values for 4 columns",
    ),
    (
        "split with an unknown field",
        {"dataframe_split": {**SPLIT, "dtypes": {}}},
        None,
        400,
        "BAD_REQUEST",
        "unexpected fields ['dtypes']",
    ),
    (
        "split index of the wrong length",
        {"dataframe_split": {**SPLIT, "index": [0]}},
        None,
        400,
        "BAD_REQUEST",
        '"index" must be a list with one entry per row',
    ),
    (
        "records that are not objects",
        {"dataframe_records": IRIS_ROWS},
        None,
        400,
        "BAD_REQUEST",
        "must be a list of objects",
    ),
    (
        "columns of unequal length",
        {"inputs": {"sepal_length_cm": [5.1, 6.7], "sepal_width_cm": [3.5]}},
        None,
        400,
        "BAD_REQUEST",
        "length of values for each column is not the same",
    ),
    (
        "columns mixing lists and values",
        {"inputs": {"sepal_length_cm": [5.1], "sepal_width_cm": 3.5}},
        None,
        400,
        "BAD_REQUEST",
        "must map every column to a list of values",
    ),
    ("no instances", {"instances": []}, None, 400, "BAD_REQUEST", "no instances"),
    (
        "wrong columns",
        {"dataframe_split": {"columns": [*IRIS_FEATURES[:3], "petal_widht_cm"], "data": IRIS_ROWS}},
        None,
        422,
        "INVALID_PARAMETER_VALUE",
        "instance 0: missing features ['petal_width_cm']",
    ),
    (
        "a missing column",
        {"dataframe_records": [dict(zip(IRIS_FEATURES[:3], IRIS_ROWS[0], strict=False))]},
        None,
        422,
        "INVALID_PARAMETER_VALUE",
        "missing features ['petal_width_cm']",
    ),
    (
        "NaN",
        b'{"instances": [[5.1, 3.5, NaN, 0.2]]}',
        None,
        422,
        "INVALID_PARAMETER_VALUE",
        "'petal_length_cm': is NaN",
    ),
    (
        "a string for a number",
        {
            "dataframe_records": [
                {**dict(zip(IRIS_FEATURES, IRIS_ROWS[0], strict=True)), "sepal_width_cm": "wide"}
            ]
        },
        None,
        422,
        "INVALID_PARAMETER_VALUE",
        "'sepal_width_cm': expected a number, got a string",
    ),
    (
        "CSV without header",
        b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n",
        "text/csv",
        400,
        "BAD_REQUEST",
        "must be a header naming the columns",
    ),
    (
        "CSV header only",
        (CSV_HEADER + "\n").encode(),
        "text/csv",
        400,
        "BAD_REQUEST",
        "no instances",
    ),
    (
        "CSV row with too few fields",
        (CSV_HEADER + "\n5.1,3.5,1.4\n").encode(),
        "text/csv",
        400,
        "BAD_REQUEST",
        "CSV row 0 (line 2) has 3 fields, the header 4",
    ),
    (
        "CSV with an empty field",
        (CSV_HEADER + "\n5.1,,1.4,0.2\n").encode(),
        "text/csv",
        422,
        "INVALID_PARAMETER_VALUE",
        "'sepal_width_cm': is null, but this feature does not allow missing values",
    ),
    (
        "CSV with text in a numeric column",
        (CSV_HEADER + "\n5.1,wide,1.4,0.2\n").encode(),
        "text/csv",
        422,
        "INVALID_PARAMETER_VALUE",
        "'sepal_width_cm': expected a number, got a string",
    ),
    (
        "CSV with NaN",
        (CSV_HEADER + "\n5.1,3.5,nan,0.2\n").encode(),
        "text/csv",
        422,
        "INVALID_PARAMETER_VALUE",
        "'petal_length_cm': is NaN",
    ),
    (
        "CSV with a misspelled column",
        (CSV_HEADER.replace("sepal_width_cm", "sepal_with_cm") + "\n5.1,3.5,1.4,0.2\n").encode(),
        "text/csv",
        422,
        "INVALID_PARAMETER_VALUE",
        "instance 0: missing features ['sepal_width_cm']",
    ),
    (
        "CSV that is not UTF-8",
        (CSV_HEADER + "\n5.1,3.5,1.4,0.2\n").encode() + b"\xff\xfe\n",
        "text/csv",
        400,
        "BAD_REQUEST",
        "not valid UTF-8",
    ),
    (
        "bad content type",
        json.dumps({"instances": IRIS_ROWS}).encode(),
        "text/plain",
        415,
        "BAD_REQUEST",
        "Content-Type must be one of ['application/json', 'text/csv'], got 'text/plain'",
    ),
    (
        "MLflow 1 format parameter",
        json.dumps({"instances": IRIS_ROWS}).encode(),
        "application/json; format=pandas-split",
        415,
        "BAD_REQUEST",
        "unrecognized content type parameters: format",
    ),
    (
        "another charset",
        json.dumps({"instances": IRIS_ROWS}).encode(),
        "application/json; charset=latin-1",
        415,
        "BAD_REQUEST",
        "charset must be utf-8",
    ),
    (
        "a CSV integer of 5000 digits",
        (CSV_HEADER + "\n5.1,3.5,1.4," + "1" * 5000 + "\n").encode(),
        "text/csv",
        400,
        "BAD_REQUEST",
        "CSV row 0 (line 2), column 'petal_width_cm': the number 1111111111111111...11111111 "
        "(5000 characters) is beyond the range of a 64-bit float",
    ),
    (
        "a CSV integer of as many digits as the largest float, but larger",
        (CSV_HEADER + "\n5.1,3.5,1.4," + "9" * 309 + "\n").encode(),
        "text/csv",
        400,
        "BAD_REQUEST",
        "CSV row 0 (line 2), column 'petal_width_cm': the number 9999999999999999...99999999 "
        "(309 characters) is beyond the range of a 64-bit float",
    ),
    (
        "a CSV number beyond float range",
        (CSV_HEADER + "\n5.1,3.5,1.4,0.2\n5.1,-1e400,1.4,0.2\n").encode(),
        "text/csv",
        400,
        "BAD_REQUEST",
        "CSV row 1 (line 3), column 'sepal_width_cm': the number -1e400 is beyond the range",
    ),
    (
        "a JSON number beyond float range",
        b'{"dataframe_split": {"columns": [], "data": [[1e400]]}}',
        None,
        400,
        "BAD_REQUEST",
        "the number 1e400 at line 1 column 47 is beyond the range of a 64-bit float",
    ),
    (
        "a JSON byte order mark",
        b"\xef\xbb\xbf" + json.dumps({"instances": IRIS_ROWS}).encode(),
        None,
        400,
        "BAD_REQUEST",
        "starts with a UTF-8 byte order mark",
    ),
    (
        "a repeated key in a record",
        b'{"dataframe_records": [{"sepal_length_cm": 5.1, "sepal_length_cm": 5.2}]}',
        None,
        400,
        "BAD_REQUEST",
        "the key 'sepal_length_cm' appears more than once in the object at $.dataframe_records[0]",
    ),
    (
        "a label from non-finite scores",
        {"instances": [[1.7976931348623157e308, 3.5, 1.3, 0.2]]},
        None,
        422,
        "INVALID_PARAMETER_VALUE",
        "instance 0: the model cannot score it: its output is not a finite number",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error_code", "fragment"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_mistakes_get_our_status_in_mlflows_error_shape(
    client, body, content_type, status, error_code, fragment
):
    response = invoke(client, body, content_type=content_type)
    assert response.status_code == status, response.json
    assert response.mimetype == "application/json"
    answer = response.json
    assert answer["error_code"] == error_code
    assert fragment in answer["message"]
    assert set(answer) <= {"error_code", "message", "details", "request_id"}
    assert answer["request_id"] == response.headers["X-Request-ID"]


def test_wrong_columns_are_named_with_a_suggestion(client):
    columns = [*IRIS_FEATURES[:3], "petal_widht_cm"]
    split = invoke(client, {"dataframe_split": {"columns": columns, "data": IRIS_ROWS[:1]}})
    csv_body = ",".join(columns) + "\n5.1,3.5,1.4,0.2\n"
    csv_answer = invoke(client, csv_body, content_type="text/csv")
    for response in (split, csv_answer):
        assert response.status_code == 422
        assert response.json["details"][1] == {
            "instance": 0,
            "feature": None,
            "problem": "unknown features ['petal_widht_cm']; "
            "did you mean 'petal_width_cm' for 'petal_widht_cm'",
            "unknown": ["petal_widht_cm"],
        }


def test_duplicated_columns_are_refused(client):
    body = {
        "dataframe_split": {"columns": [*IRIS_FEATURES[:3], IRIS_FEATURES[0]], "data": [[1] * 4]}
    }
    response = invoke(client, body)
    assert response.status_code == 400
    assert response.json["error_code"] == "BAD_REQUEST"
    assert "duplicated columns ['sepal_length_cm']" in response.json["message"]


def test_value_errors_name_instance_and_feature_in_details(client):
    rows = [IRIS_ROWS[0], [5.1, "x", 1.4, None]]
    response = invoke(client, {"instances": rows})
    assert response.status_code == 422
    assert response.json["details"] == [
        {"instance": 1, "feature": "sepal_width_cm", "problem": "expected a number, got a string"},
        {
            "instance": 1,
            "feature": "petal_width_cm",
            "problem": "is null, but this feature does not allow missing values",
        },
    ]


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_too_many_instances_is_413(make_client, kind):
    client = make_client(max_instances=2)
    if kind == "csv":
        body = CSV_HEADER + "\n" + "\n".join(",".join(map(str, r)) for r in IRIS_ROWS) + "\n"
        response = invoke(client, body, content_type="text/csv")
    else:
        response = invoke(client, {"dataframe_split": SPLIT})
    assert response.status_code == 413
    assert response.json["error_code"] == "INVALID_PARAMETER_VALUE"
    assert response.json["details"] == {"instances": 3, "max_instances": 2}
    assert invoke(client, {"instances": IRIS_ROWS[:2]}).status_code == 200


def test_body_over_the_limit_is_413_in_mlflows_shape(make_client):
    client = make_client(max_body_bytes=100, default_model=IRIS)
    response = invoke(client, {"dataframe_split": SPLIT}, "/invocations")
    assert response.status_code == 413
    assert response.json["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "larger than the limit of 100 bytes" in response.json["message"]


def test_unknown_model_and_malformed_name(client):
    unknown = invoke(client, {"instances": IRIS_ROWS}, "/v1/models/no-such-model/invocations")
    assert unknown.status_code == 404
    assert unknown.json["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "no model named 'no-such-model'" in unknown.json["message"]
    malformed = invoke(client, {"instances": IRIS_ROWS}, "/v1/models/Iris_Classifier/invocations")
    assert malformed.status_code == 400
    assert malformed.json["error_code"] == "BAD_REQUEST"


def test_wrong_method_and_unknown_routes_under_mlflow_paths(client):
    wrong_method = client.get("/invocations")
    assert wrong_method.status_code == 405
    assert wrong_method.json["error_code"] == "BAD_REQUEST"
    assert "POST" in wrong_method.headers["Allow"]
    unknown = client.post("/invocations/extra", json={})
    assert unknown.status_code == 404
    assert unknown.json["error_code"] == "ENDPOINT_NOT_FOUND"
    # The native API keeps its own error shape.
    native = client.post(f"/v1/models/{IRIS}/predict", json={"rows": []})
    assert native.status_code == 400 and "error" in native.json and "error_code" not in native.json


def test_errors_never_echo_the_payload(client):
    secret = 987654.321
    response = invoke(client, {"instances": [[5.1, 3.5, 1.4, "s3cr3t"], [secret, 1, 1, None]]})
    assert response.status_code == 422
    assert "s3cr3t" not in response.get_data(as_text=True)
    assert str(secret) not in response.get_data(as_text=True)


# -- the codec on its own (no Flask) ---------------------------------------------------------


MIXED = InputSchema(
    [
        FeatureSpec("island", "category", categories=("007", "Biscoe", "Dream")),
        FeatureSpec("mass", "float64", missing="allow"),
        FeatureSpec("count", "int64"),
    ]
)


def test_csv_keeps_category_text_and_parses_numbers():
    body = b'island,mass,count\n007,3750.5,3\n"Dream, north",,-2\n,1e3,+4\n'
    instances = codec.instances_from_csv(body, MIXED, 10)
    assert instances == [["007", 3750.5, 3], ["Dream, north", None, -2], [None, 1000.0, 4]]
    assert [type(v) for v in instances[0]] == [str, float, int]
    # Numbers that the validation then takes as numbers of the right kind.
    rows = MIXED.rows([instances[0]])
    assert MIXED.to_array(rows)[2].tolist() == [3.0]


def test_csv_with_a_byte_order_mark_and_crlf_line_ends():
    body = "\ufeffcount,island,mass\r\n3,Biscoe,1.5\r\n".encode()
    assert codec.instances_from_csv(body, MIXED, 10) == [["Biscoe", 1.5, 3]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12", 12), ("-1.5", -1.5), (".5", 0.5), ("1E-3", 0.001), (" 7 ", 7), ("", None)],
)
def test_csv_number_fields(text, expected):
    assert codec._number(text) == expected
    assert type(codec._number(text)) is type(expected)


@pytest.mark.parametrize("text", ["1_000", "0x10", "1,5", "abc", "nan?"])
def test_csv_fields_that_are_not_numbers_stay_text(text):
    assert codec._number(text) == text


def test_csv_nan_and_infinity_are_floats_for_validation_to_name():
    assert np.isnan(codec._number("NaN"))
    assert codec._number("-inf") == -np.inf


def test_mlflow_error_codes():
    assert codec.mlflow_error_code("invalid_input") == "INVALID_PARAMETER_VALUE"
    assert codec.mlflow_error_code("invalid_json") == "BAD_REQUEST"
    assert codec.mlflow_error_code("model_not_found") == "RESOURCE_DOES_NOT_EXIST"
    assert codec.mlflow_error_code("internal_error") == "INTERNAL_ERROR"
    assert codec.error_body("invalid_json", "bad", None, "rid") == {
        "error_code": "BAD_REQUEST",
        "message": "bad",
        "request_id": "rid",
    }
