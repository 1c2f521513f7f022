"""/openapi.json and /docs through Nginx and Gunicorn: the document each worker builds
from what it serves, and the page with its security headers intact."""

from __future__ import annotations

import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

pytestmark = pytest.mark.integration

MODELS = ["iris-classifier", "breast-cancer-classifier", "diabetes-regressor"]


def test_openapi_document_through_nginx(stack, http):
    response = http.get(f"{stack.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["Server"].startswith("nginx")
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    validate(document, cls=OpenAPIV31SpecValidator)
    for name in MODELS:
        assert f"/v1/models/{name}/predict" in document["paths"]
        assert f"{name}.Instance" in document["components"]["schemas"]
    # Every worker answers with the same document (same models served).
    for _ in range(6):
        assert http.get(f"{stack.url}/openapi.json").json() == document


def test_a_body_valid_for_the_documented_schema_predicts_through_nginx(stack, http):
    document = http.get(f"{stack.url}/openapi.json").json()
    operation = document["paths"]["/v1/models/iris-classifier/predict"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["example"]
    schema = {
        "$ref": "#/components/schemas/iris-classifier.PredictRequest",
        "components": document["components"],
    }
    jsonschema.Draft202012Validator(schema).validate(body)
    response = http.post(f"{stack.url}/v1/models/iris-classifier/predict", json=body)
    assert response.status_code == 200
    answer = {**schema, "$ref": "#/components/schemas/iris-classifier.PredictResponse"}
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
    for name in MODELS:
        assert f'id="model-{name}"' in html
        assert f"/v1/models/{name}/predict" in html
    # Nginx passes the Host the client sent, port included: the curl examples work as shown.
    assert f"curl -s -X POST {stack.url}/v1/models/" in html
