"""The HTTP API through Flask's test client: answers, request ids, and every client
mistake getting its 4xx with a JSON error that says what is wrong and where."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from service.protocols import native
from service.runtime.model import load
from service.store import ModelStore
from tests.outputs import same_as
from tests.support import CANCER, DEMO_MODELS, IRIS, IRIS_OBJECT, IRIS_ROW


def post(client, path, body, content_type="application/json", headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, data=data, content_type=content_type, headers=headers or {})


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_predictions_equal_in_process_predict(client, store_dir, name):
    model = load(ModelStore(store_dir), name, 1)
    rows = np.asarray(model.metadata["golden"]["instances"])
    rng = np.random.default_rng(0)
    rows = np.vstack([rows, rows * rng.uniform(0.9, 1.1, size=rows.shape)])
    int_columns = [i for i, f in enumerate(model.schema.features) if f.dtype == "int64"]
    rows[:, int_columns] = np.round(rows[:, int_columns])

    response = post(client, f"/v1/models/{name}/predict", {"instances": rows.tolist()})

    assert response.status_code == 200, response.json
    body = response.json
    assert body["model"] == name and body["version"] == 1
    assert body["predictions"] == same_as(model.estimator.predict(rows))
    assert body["backend"] == "onnxruntime"
    if model.task == "classification":
        assert body["probabilities"] == same_as(model.estimator.predict_proba(rows))
        assert body["classes"] == model.metadata["classes"]
    else:
        assert "probabilities" not in body


def test_objects_keyed_by_name_give_the_same_answer_as_lists(client):
    by_list = post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}).json
    shuffled = dict(reversed(list(IRIS_OBJECT.items())))
    by_name = post(client, f"/v1/models/{IRIS}/predict", {"instances": [shuffled]}).json
    assert by_name["predictions"] == by_list["predictions"] == ["setosa"]
    assert by_name["probabilities"] == by_list["probabilities"]


def test_request_id_is_kept_or_generated(client):
    kept = post(
        client,
        f"/v1/models/{IRIS}/predict",
        {"instances": [IRIS_ROW]},
        headers={"X-Request-ID": "abc-123"},
    )
    assert kept.headers["X-Request-ID"] == "abc-123"
    assert kept.json["request_id"] == "abc-123"
    generated = post(
        client,
        f"/v1/models/{IRIS}/predict",
        {"instances": [IRIS_ROW]},
        headers={"X-Request-ID": "bad id with spaces"},
    )
    assert generated.headers["X-Request-ID"] != "bad id with spaces"
    assert len(generated.headers["X-Request-ID"]) == 32
    assert generated.json["request_id"] == generated.headers["X-Request-ID"]


def test_version_and_alias_in_the_path(client, store):
    store.promote(IRIS, 1, alias="staging")
    assert (
        post(client, f"/v1/models/{IRIS}@1/predict", {"instances": [IRIS_ROW]}).json["version"] == 1
    )
    assert (
        post(client, f"/v1/models/{IRIS}@staging/predict", {"instances": [IRIS_ROW]}).json[
            "version"
        ]
        == 1
    )


BAD_INPUTS = [
    # (body, content_type, status, code, message fragment)
    (b"{not json", "application/json", 400, "invalid_json", "not valid JSON"),
    (b"", "application/json", 400, "invalid_json", "empty"),
    (
        json.dumps({"instances": [IRIS_ROW]}),
        "text/plain",
        415,
        "unsupported_media_type",
        "Content-Type must be application/json",
    ),
    (
        json.dumps({"instances": [IRIS_ROW]}),
        "application/json; charset=latin-1",
        415,
        "unsupported_media_type",
        "charset",
    ),
    (json.dumps([IRIS_ROW]), "application/json", 400, "invalid_payload", "JSON object"),
    (
        json.dumps({"rows": [IRIS_ROW]}),
        "application/json",
        400,
        "missing_instances",
        'no "instances"',
    ),
    (
        json.dumps({"instances": IRIS_ROW[0]}),
        "application/json",
        400,
        "instances_not_a_list",
        "must be a list",
    ),
    (json.dumps({"instances": []}), "application/json", 400, "no_instances", "empty"),
    (
        json.dumps({"instances": [IRIS_ROW], "extra": 1}),
        "application/json",
        400,
        "unexpected_keys",
        "extra",
    ),
    (
        json.dumps({"instances": [[1.0, 2.0, 3.0]]}),
        "application/json",
        422,
        "invalid_input",
        "instance 0: has 3 values, the model takes 4",
    ),
    (
        json.dumps({"instances": [IRIS_ROW, [1, 2, 3, 4, 5]]}),
        "application/json",
        422,
        "invalid_input",
        "instance 1: has 5 values",
    ),
    (
        json.dumps({"instances": [{"sepal_length_cm": 1}]}),
        "application/json",
        422,
        "invalid_input",
        "missing features ['sepal_width_cm', 'petal_length_cm', 'petal_width_cm']",
    ),
    (
        json.dumps({"instances": [{**IRIS_OBJECT, "petal_widht_cm": 1}]}),
        "application/json",
        422,
        "invalid_input",
        "unknown features ['petal_widht_cm']; did you mean 'petal_width_cm'",
    ),
    (
        json.dumps({"instances": [[5.1, "3.5", 1.4, 0.2]]}),
        "application/json",
        422,
        "invalid_input",
        "instance 0, feature 'sepal_width_cm': expected a number, got a string",
    ),
    (
        json.dumps({"instances": [[5.1, 3.5, True, 0.2]]}),
        "application/json",
        422,
        "invalid_input",
        "feature 'petal_length_cm': expected a number, got a boolean",
    ),
    (
        json.dumps(
            {
                "instances": [
                    {
                        "sepal_length_cm": 5.1,
                        "sepal_width_cm": 3.5,
                        "petal_length_cm": 1.4,
                        "petal_width_cm": False,
                    }
                ]
            }
        ),
        "application/json",
        422,
        "invalid_input",
        "feature 'petal_width_cm': expected a number, got a boolean",
    ),
    (
        b'{"instances": [[5.1, 3.5, 1.4, NaN]]}',
        "application/json",
        422,
        "invalid_input",
        "feature 'petal_width_cm': is NaN, but this feature does not allow missing values",
    ),
    (
        b'{"instances": [[5.1, Infinity, 1.4, 0.2]]}',
        "application/json",
        422,
        "invalid_input",
        "feature 'sepal_width_cm': is Infinity",
    ),
    (
        b'{"instances": [[5.1, 3.5, 1.4, 0.2], [5.1, 3.5, null, 0.2]]}',
        "application/json",
        422,
        "invalid_input",
        "instance 1, feature 'petal_length_cm': is null",
    ),
    # A number beyond float range would parse to an infinity nobody sent: refused where it is.
    (
        b'{"instances": [[5.1, 3.5, 1.4, 1e999]]}',
        "application/json",
        400,
        "number_out_of_range",
        "the number 1e999 at line 1 column 32 is beyond the range of a 64-bit float",
    ),
    (
        b'{"instances": [[NaN, 3.5, 1.4, -1' + b"0" * 400 + b"]]}",
        "application/json",
        400,
        "number_out_of_range",
        "the number -100000000000000...00000000 at line 1 column 32 is beyond the range",
    ),
    # Bytes that are no UTF-8 JSON text say so, and where.
    (
        b'\xef\xbb\xbf{"instances": [[5.1, 3.5, 1.4, 0.2]]}',
        "application/json",
        400,
        "invalid_encoding",
        "starts with a UTF-8 byte order mark",
    ),
    (
        b'{"instances": [{"sepal_length_cm\xff": 1}]}',
        "application/json",
        400,
        "invalid_encoding",
        "not valid UTF-8: invalid start byte at byte 32",
    ),
    (
        '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'.encode("utf-16"),
        "application/json",
        400,
        "invalid_encoding",
        "not valid UTF-8",
    ),
    (
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}\x00',
        "application/json",
        400,
        "invalid_json",
        "unexpected content after document: line 1 column 38",
    ),
    (
        b'{"instances": [["5.1\x00", 3.5, 1.4, 0.2]]}',
        "application/json",
        400,
        "invalid_json",
        "unexpected control character in string: line 1 column 21",
    ),
    (
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]], "instances": [[1, 2, 3, 4]]}',
        "application/json",
        400,
        "duplicate_key",
        "the key 'instances' appears more than once in the object at $",
    ),
    (
        json.dumps({"instances": [IRIS_OBJECT]})[:-3].encode() + b', "petal_width_cm": 9}]}',
        "application/json",
        400,
        "duplicate_key",
        "the key 'petal_width_cm' appears more than once in the object at $.instances[0]",
    ),
    (
        b'{"instances": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        "application/json",
        400,
        "invalid_json",
        "depth limit exceeded",
    ),
    (
        json.dumps({"instances": [IRIS_ROW, IRIS_OBJECT]}),
        "application/json",
        422,
        "invalid_input",
        "instance 1: mixes objects and lists",
    ),
    (
        json.dumps({"instances": [3]}),
        "application/json",
        422,
        "invalid_input",
        "instance 0: is a number",
    ),
    (
        json.dumps({"instances": [IRIS_ROW] * 10_001}),
        "application/json",
        413,
        "too_many_instances",
        "at most 10000",
    ),
]


@pytest.mark.parametrize(("body", "content_type", "status", "code", "message"), BAD_INPUTS)
def test_bad_input_gets_a_4xx_saying_what_is_wrong(
    client, body, content_type, status, code, message
):
    response = post(client, f"/v1/models/{IRIS}/predict", body, content_type=content_type)
    assert response.status_code == status
    assert response.is_json
    error = response.json["error"]
    assert error["code"] == code
    assert message in error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    # A worker that answered a bad request still answers good ones.
    assert post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}).status_code == 200


def test_bad_input_details_name_instance_and_feature(client):
    body = {"instances": [IRIS_ROW, [5.1, "x", 1.4, None], IRIS_ROW]}
    details = post(client, f"/v1/models/{IRIS}/predict", body).json["error"]["details"]
    assert {"instance": 1, "feature": "sepal_width_cm"}.items() <= details[0].items()
    assert {"instance": 1, "feature": "petal_width_cm"}.items() <= details[1].items()


def test_errors_never_echo_the_payload(client):
    secret = "patient-name-Jane-Doe"
    response = post(client, f"/v1/models/{IRIS}/predict", {"instances": [[secret, 1, 2, 3]]})
    assert response.status_code == 422
    assert secret not in response.get_data(as_text=True)


def test_body_over_the_limit_gets_413(store_dir):
    from service import create_app

    app = create_app({"store": store_dir, "max_body_bytes": 1000})
    response = post(
        app.test_client(), f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW] * 100}
    )
    assert response.status_code == 413
    assert response.json["error"]["code"] == "body_too_large"
    assert "1000 bytes" in response.json["error"]["message"]
    app.extensions["model_service"].registry.stop()


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/models/no-such-model/predict", 404, "model_not_found"),
        (f"/v1/models/{IRIS}@7/predict", 404, "version_not_found"),
        (f"/v1/models/{IRIS}@canary/predict", 404, "alias_not_found"),
        ("/v1/models/Bad_Name/predict", 400, "invalid_model_name"),
        ("/v1/models/../predict", 400, "invalid_model_name"),
        ("/v3/nothing-here", 404, "not_found"),
    ],
)
def test_unknown_models_versions_and_aliases(client, path, status, code):
    response = post(client, path, {"instances": [IRIS_ROW]})
    assert response.status_code == status
    assert response.json["error"]["code"] == code


def test_wrong_method_gets_405_with_allow(client):
    response = client.get(f"/v1/models/{IRIS}/predict")
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_unexpected_fault_is_a_json_500_with_request_id(app, client, caplog):
    model = app.extensions["model_service"].registry.get(
        __import__("service.store", fromlist=["parse_ref"]).parse_ref(IRIS)
    )

    class Broken:
        def predict_proba(self, rows):
            raise RuntimeError("native library fault")

    # Both paths broken: onnxruntime would hand a failing request to the pickle.
    model.backend = model.sklearn_backend
    model.sklearn_backend.estimator = Broken()
    response = post(
        client,
        f"/v1/models/{IRIS}/predict",
        {"instances": [IRIS_ROW]},
        headers={"X-Request-ID": "req-500"},
    )
    assert response.status_code == 500
    assert response.json["error"] == {
        "code": "internal_error",
        "message": "the server failed to handle this request; quote the request id when "
        "reporting it",
        "request_id": "req-500",
    }
    assert "native library fault" not in response.get_data(as_text=True)
    assert "native library fault" in caplog.text and "req-500" in caplog.text


def test_health_and_readiness(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json["models"]) == set(DEMO_MODELS)


def test_readiness_is_503_when_the_production_model_cannot_load(store_dir):
    from service import create_app

    (store_dir / IRIS / "1" / "model.pkl").write_bytes(b"tampered")
    app = create_app({"store": store_dir})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["models"][IRIS]["ready"] is False
    assert "sha256" in response.json["models"][IRIS]["error"]
    assert (
        post(app.test_client(), f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}).status_code
        == 503
    )
    app.extensions["model_service"].registry.stop()


def test_model_listing_and_details(client):
    listing = client.get("/v1/models").json["models"]
    assert [m["name"] for m in listing] == sorted(DEMO_MODELS)
    iris = next(m for m in listing if m["name"] == IRIS)
    assert iris["aliases"] == {"production": 1}
    assert iris["serving_version"] == 1
    assert iris["features"] == list(IRIS_OBJECT)

    details = client.get(f"/v1/models/{IRIS}").json
    assert details["versions"][0]["primary_metric"] == "f1_macro"
    assert details["versions"][0]["test_score"] > details["versions"][0]["baseline_test_score"]
    assert details["metadata"]["artifact"]["format"] == "pickle"

    version = client.get(f"/v1/models/{IRIS}/versions/1").json
    assert version["metadata"]["input"]["features"][0]["name"] == "sepal_length_cm"
    assert client.get(f"/v1/models/{IRIS}/versions/2").status_code == 404
    assert client.get("/v1/models/nope").status_code == 404


def test_may_hold_booleans_is_false_only_without_a_boolean_literal():
    assert native.may_hold_booleans(b'{"instances": [[1, true]]}')
    assert native.may_hold_booleans(b'{"instances": [[1, 2]], "x": false}')
    assert not native.may_hold_booleans(b'{"instances": [[1, 2.5, null]]}')
    assert native.may_hold_booleans(b'{"instances": [{"a": 1, "b": false}]}')
    assert not native.may_hold_booleans(b'{"instances": [{"a": 1, "bl": 2}]}')


def test_may_hold_text_is_false_only_without_a_quote_after_the_first_bracket():
    assert not native.may_hold_text(b'{"instances": [[1, 2.5, null]]}')
    assert native.may_hold_text(b'{"instances": [[1, "2"]]}')
    assert native.may_hold_text(b'{"instances": [{"a": 1}]}')
    assert native.may_hold_text(b'{"instances": [[1, 2]], "parameters": {}}')
    assert native.may_hold_text(b'{"a[": 1, "instances": [[1, 2]]}')


@pytest.mark.parametrize(
    "bad_row, problem",
    [
        ([5.1, None, 1.4, 0.2], "does not allow missing values"),
        ([5.1, [3.5], 1.4, 0.2], "expected a number"),
        ([5.1, 3.5, 1.4], "has 3 values"),
        ([5.1, 3.5, 1.4, 0.2, 1.0], "has 5 values"),
    ],
)
def test_a_bad_row_among_many_rows_of_numbers_is_named(client, bad_row, problem):
    # Many rows with no text in them are read flat; the one bad row is still named.
    rows = [IRIS_ROW] * 60
    rows[37] = bad_row
    response = post(client, f"/v1/models/{IRIS}/predict", {"instances": rows})
    assert response.status_code == 422
    (detail,) = response.json["error"]["details"]
    assert detail["instance"] == 37
    assert problem in detail["problem"]


# -- hostile bytes and values -------------------------------------------------------


def test_a_lone_surrogate_in_a_feature_name_is_named_in_the_422(client):
    # JSON may spell a lone surrogate as an escape; the 422 quotes the unknown name, and
    # its body is still valid UTF-8 JSON: the surrogate is written as the text \ud800.
    response = post(client, f"/v1/models/{IRIS}/predict", b'{"instances": [{"\\ud800": 1}]}')
    assert response.status_code == 422
    error = json.loads(response.get_data().decode("utf-8", "strict"))["error"]
    assert error["code"] == "invalid_input"
    assert error["details"][1]["problem"] == "unknown features ['\\ud800']"
    assert error["details"][1]["unknown"] == ["\\ud800"]


HUGE = 1.7976931348623157e308


def test_non_finite_outputs_are_refused_and_never_recorded(store_dir, tmp_path):
    from service import create_app

    app = create_app({"store": store_dir, "state_dir": tmp_path / "state", "prediction_log": True})
    client = app.test_client()
    try:
        kept = post(
            client,
            f"/v1/models/{IRIS}/predict",
            {"instances": [IRIS_ROW]},
            headers={"X-Request-ID": "kept"},
        )
        assert kept.status_code == 200
        # onnxruntime computes in float32 (HUGE is infinity there) and gives NaN; the
        # pickle, asked next, overflows in its scaler: no finite answer exists.
        refused = post(
            client,
            f"/v1/models/{IRIS}/predict",
            {"instances": [IRIS_ROW, [HUGE, 3.5, 1.3, 0.2], IRIS_ROW, [1.0, 1.0, -HUGE, 1.0]]},
            headers={"X-Request-ID": "refused"},
        )
        assert refused.status_code == 422
        error = refused.json["error"]
        assert error["code"] == "non_finite_output"
        assert error["message"].startswith("instance 1: the model cannot score it")
        assert [problem["instance"] for problem in error["details"]] == [1, 3]
        assert "null" not in refused.get_data(as_text=True).replace('"feature":null', "")
        client.get(f"/v1/models/{IRIS}/performance")  # flushes the prediction log
        logged = [
            json.loads(line)["request_id"]
            for path in (tmp_path / "state" / "predictions").glob("*.jsonl")
            for line in path.open()
        ]
        assert logged == ["kept"]
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'reason="non_finite_output"' in metrics
    finally:
        app.extensions["model_service.monitoring"].stop()
        app.extensions["model_service"].registry.stop()


def test_huge_but_finite_values_are_valid_input(client):
    # A forest routes any finite value; its outputs are finite, so they are served.
    response = post(
        client,
        f"/v1/models/{CANCER}/predict",
        {"instances": [[HUGE] * 30, [-HUGE] * 30]},
    )
    assert response.status_code == 200, response.json
    assert all(math.isfinite(p) for row in response.json["probabilities"] for p in row)


def test_the_pickle_refusing_values_too_large_is_a_422_naming_the_rows(store_dir):
    from service import create_app

    # scikit-learn's trees take float32: it refuses larger values (a ValueError, once a 500).
    app = create_app({"store": store_dir, "backend": "sklearn"})
    try:
        rows = [[1.0] * 30] * 5
        rows[3] = [1e39] * 30
        response = post(app.test_client(), f"/v1/models/{CANCER}/predict", {"instances": rows})
        assert response.status_code == 422
        assert response.json["error"]["code"] == "non_finite_output"
        assert [p["instance"] for p in response.json["error"]["details"]] == [3]
    finally:
        app.extensions["model_service"].registry.stop()
