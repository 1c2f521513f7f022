"""/openapi.json and /docs through Nginx and Gunicorn: the document each worker builds
from what it serves, and the page with its security headers intact; what the document
promises about every route: request ids, encoded bodies, JSON readiness."""

from __future__ import annotations

import gzip
import json

import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from tests.support import DEMO_MODELS, IRIS, IRIS_ROW

pytestmark = pytest.mark.integration


def test_openapi_document_through_nginx(stack, http):
    response = http.get(f"{stack.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["Server"].startswith("nginx")
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    validate(document, cls=OpenAPIV31SpecValidator)
    for name in DEMO_MODELS:
        assert f"/v1/models/{name}/predict" in document["paths"]
        assert f"{name}.Instance" in document["components"]["schemas"]
    # Every worker answers with the same document (same models served).
    for _ in range(6):
        assert http.get(f"{stack.url}/openapi.json").json() == document


def test_a_body_valid_for_the_documented_schema_predicts_through_nginx(stack, http):
    document = http.get(f"{stack.url}/openapi.json").json()
    operation = document["paths"][f"/v1/models/{IRIS}/predict"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["example"]
    schema = {
        "$ref": f"#/components/schemas/{IRIS}.PredictRequest",
        "components": document["components"],
    }
    jsonschema.Draft202012Validator(schema).validate(body)
    response = http.post(f"{stack.url}/v1/models/{IRIS}/predict", json=body)
    assert response.status_code == 200
    answer = {**schema, "$ref": f"#/components/schemas/{IRIS}.PredictResponse"}
    jsonschema.Draft202012Validator(answer).validate(response.json())


def test_docs_page_through_nginx(stack, http):
    response = http.get(f"{stack.url}/docs")
    assert response.status_code == 200
    assert response.headers["Server"].startswith("nginx")
    assert response.headers["Content-Type"].startswith("text/html")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "style-src 'unsafe-inline'" in policy
    assert "script-src" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.text
    assert 'src="http' not in html and 'href="http' not in html
    for name in DEMO_MODELS:
        assert f'id="model-{name}"' in html
        assert f"/v1/models/{name}/predict" in html
    # Nginx passes the Host the client sent, port included: the curl examples work as shown.
    assert f"curl -s -X POST {stack.url}/v1/models/" in html


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("client-id:42.a_b", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("x" * 4_000, False),
        ("has space", False),
        ("semi;colon", False),
    ],
)
def test_a_request_id_is_kept_only_when_sane(stack, http, sent, kept):
    response = http.post(
        f"{stack.url}/v1/models/{IRIS}/predict",
        json={"instances": [{"x": 1}]},
        headers={"X-Request-ID": sent},
    )
    assert response.status_code == 422
    echoed = response.headers["X-Request-ID"]
    assert (echoed == sent) is kept
    assert response.json()["error"]["request_id"] == echoed
    assert len(echoed) <= 128


def test_a_request_id_larger_than_the_header_buffers_is_the_documented_431(stack, http):
    document = http.get(f"{stack.url}/openapi.json").json()
    path = f"/v1/models/{IRIS}/predict"
    response = http.post(f"{stack.url}{path}", json={}, headers={"X-Request-ID": "x" * 10_000})
    assert response.status_code == 431
    assert "431" in document["paths"][path]["post"]["responses"]
    assert (
        response.json()["error"]["request_id"] == response.headers["X-Request-ID"] != "x" * 10_000
    )


def test_encoded_bodies_through_nginx(stack, http):
    url = f"{stack.url}/v1/models/{IRIS}/predict"
    body = json.dumps({"instances": [IRIS_ROW]}).encode()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    answer = http.post(url, data=gzip.compress(body), headers=headers)
    assert answer.status_code == 200
    assert answer.json()["predictions"] == ["setosa"]
    refused = http.post(url, data=body, headers={**headers, "Content-Encoding": "br"})
    assert refused.status_code == 415
    assert refused.json()["error"]["code"] == "unsupported_content_encoding"


@pytest.mark.parametrize("path", ["/ping", "/health"])
def test_mlflow_readiness_answers_json_as_documented(stack, http, path):
    document = http.get(f"{stack.url}/openapi.json").json()
    response = http.get(f"{stack.url}{path}")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    schema = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    root = {**schema["schema"], "components": document["components"]}
    jsonschema.Draft202012Validator(root).validate(response.json())
