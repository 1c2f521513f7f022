"""GET /openapi.json and GET /docs: a valid OpenAPI 3.1 document that covers every route,
typed per served model, and the same document as a self-contained HTML page."""

from __future__ import annotations

import copy
import hashlib
import html as html_module
import json
import re
import shlex

import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from werkzeug.exceptions import MethodNotAllowed, NotFound

from service import create_app, openapi
from service.api import auth
from service.errors import TooManyInstances
from service.keys import KeyRing
from service.monitoring import live
from service.protocols import v2
from service.store import experiments, layout
from tests.support import CANCER, DIABETES, IRIS, IRIS_OBJECT

SERVED = (IRIS, CANCER, DIABETES)
IGNORED_METHODS = {"HEAD", "OPTIONS"}
# Werkzeug's <converter:name> and <name>, spelled out here rather than taken from the
# code under test, so a broken conversion there cannot hide an undocumented route.
RULE_VARIABLE = re.compile(r"<(?:\w+:)?(\w+)>")
SAMPLE_VALUES = {"name": IRIS, "model_ref": IRIS, "version": "1"}


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def component_validator(document: dict, name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema, resolving $refs within the document."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


def documented_operations(document: dict) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


# --- the document ------------------------------------------------------------------


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["info"]["version"]
    assert {t["name"] for t in document["tags"]} == {
        "native",
        "models",
        "admin",
        "experiments",
        "v2",
        "mlflow",
        "health",
        "docs",
    }


def undocumented(app, document: dict) -> list[str]:
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = RULE_VARIABLE.sub(r"{\1}", rule.rule)
        for method in sorted(rule.methods - IGNORED_METHODS):
            if method.lower() not in document["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    return missing


def test_every_route_of_the_app_is_documented(app, document):
    missing = undocumented(app, document)
    assert not missing, f"routes missing from the OpenAPI document: {missing}"


def test_a_route_added_without_documentation_is_caught(app):
    app.add_url_rule("/v1/models/<name>/explain", "explain", lambda name: "", methods=["POST"])
    app.add_url_rule("/readyz", "readyz_delete", lambda: "", methods=["DELETE"])
    document = app.test_client().get("/openapi.json").get_json()
    assert undocumented(app, document) == [
        "POST /v1/models/{name}/explain",
        "DELETE /readyz",
    ]


def test_every_documented_operation_is_a_route(app, document):
    """The reverse: nothing documented that the app does not answer (stale docs)."""
    adapter = app.url_map.bind("localhost")
    stale = []
    for path, method in sorted(documented_operations(document)):
        concrete = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_VALUES[m.group(1)], path)
        try:
            endpoint, _ = adapter.match(concrete, method=method)
        except (NotFound, MethodNotAllowed):
            stale.append(f"{method} {path}")
            continue
        assert endpoint != "static"
    assert not stale, f"documented but not routed: {stale}"


def test_path_parameters_are_declared_for_every_template(document):
    for path, item in document["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == names, f"{method} {path}"


def endpoint_of(adapter, path: str, method: str) -> str:
    concrete = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_VALUES[m.group(1)], path)
    return adapter.match(concrete, method=method)[0]


def check_security(app, document: dict, open_scopes: set[str]) -> set[str]:
    """Each operation declares the key scope service.api.auth asks for, unless it is open,
    and then 401 and 403 too. Returns the scopes seen."""
    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    adapter = app.url_map.bind("localhost")
    seen = set()
    for path, method in sorted(documented_operations(document)):
        operation = document["paths"][path][method.lower()]
        scope = auth.scope_of(endpoint_of(adapter, path, method))
        needed = scope is not None and scope not in open_scopes
        expected = [{"apiKey": [scope]}] if needed else None
        assert operation.get("security") == expected, f"{method} {path}"
        assert ({"401", "403"} <= set(operation["responses"])) == needed, f"{method} {path}"
        if needed:
            seen.add(scope)
    return seen


def test_operations_that_need_a_key_declare_its_scope(app, document):
    # By default prediction and reading are open; feedback and admin need a key.
    assert check_security(app, document, {"predict", "read"}) == {"feedback", "admin"}
    assert document["paths"]["/v1/admin/reload"]["post"]["security"] == [{"apiKey": ["admin"]}]
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_with_no_open_scope_every_route_but_health_declares_its_key(store_dir, tmp_path):
    key = KeyRing(store_dir).create("reader", ["read"])
    app = create_app({"store": store_dir, "state_dir": tmp_path / "monitoring", "open_scopes": ()})
    try:
        answer = app.test_client().get("/openapi.json", headers={"Authorization": f"Bearer {key}"})
        document = answer.get_json()
        scopes = check_security(app, document, set())
        assert scopes == {"predict", "feedback", "read", "admin"}
        typed = document["paths"][f"/v1/models/{IRIS}/predict"]["post"]
        assert typed["security"] == [{"apiKey": ["predict"]}]
        for public in ("/healthz", "/readyz", "/ping", "/health", "/v2/health/live"):
            assert "security" not in document["paths"][public]["get"], public
    finally:
        app.extensions["model_service"].registry.stop()


def test_every_declared_status_is_a_failure_the_service_knows(document):
    """Each status an operation declares is 200 or the status of one kind of failure, and
    each kind's status is that of the error class the service raises for it."""
    known = {"200", *openapi.statuses().values()}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            undeclared = set(operation["responses"]) - known
            assert not undeclared, f"{method} {path}: {undeclared}"
            for status, response in operation["responses"].items():
                ref = response.get("$ref", "")
                kind = ref.rsplit("/", 1)[-1].removeprefix("V2").removeprefix("Mlflow")
                if kind:
                    assert openapi.statuses()[kind] == status, f"{method} {path} {status}"
    assert openapi.statuses()["TooLarge"] == str(int(TooManyInstances.status)) == "413"


def test_each_protocol_documents_its_own_error_shape(document):
    responses = document["components"]["responses"]

    def error_schema(path: str, method: str, status: str) -> str:
        """The protocol's own error schema; Nginx's native one is the alternative."""
        ref = document["paths"][path][method]["responses"][status]["$ref"]
        schema = responses[ref.rsplit("/", 1)[-1]]["content"]["application/json"]["schema"]
        if "oneOf" in schema:
            own, edge = schema["oneOf"]
            assert edge == {"$ref": "#/components/schemas/Error"}
            schema = own
        return schema["$ref"].rsplit("/", 1)[-1]

    assert error_schema("/v1/models/{model_ref}/predict", "post", "422") == "Error"
    assert error_schema("/v2/models/{name}/infer", "post", "422") == "V2Error"
    assert error_schema("/invocations", "post", "422") == "MlflowError"
    assert error_schema("/invocations", "post", "409") == "MlflowError"
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert "application/octet-stream" in infer["requestBody"]["content"]
    assert "Inference-Header-Content-Length" in {p["name"] for p in infer["parameters"]}
    invocations = document["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert set(invocations) == {"application/json", "text/csv"}


def test_model_details_reuse_the_metadata_schema(document):
    schemas = document["components"]["schemas"]
    assert "$schema" not in schemas["Metadata"]
    assert schemas["Metadata"]["required"][:3] == ["schema_version", "name", "version"]
    features = schemas["Metadata"]["properties"]["input"]["properties"]["features"]
    assert features["items"] == {"$ref": "#/components/schemas/Feature"}
    # ECMA-262 anchors for client generators, not Python's \Z.
    assert "\\Z" not in str(schemas["Metadata"])
    assert schemas["Metadata"]["properties"]["name"]["pattern"].endswith("$")


def test_limits_and_patterns_come_from_the_code_that_enforces_them(document):
    """openapi.yaml's !fact values are the code's constants, whatever they are now."""
    schemas = document["components"]["schemas"]
    start = schemas["ExperimentStartRequest"]["properties"]
    assert start["alpha"]["default"] == experiments.DEFAULT_ALPHA
    assert start["min_effect"]["default"] == experiments.DEFAULT_MIN_EFFECT
    weights = start["variants"]["oneOf"][0]
    assert weights["additionalProperties"]["maximum"] == experiments.TOTAL_WEIGHT
    running = schemas["ExperimentStatus"]["properties"]["experiment"]["oneOf"][1]
    assert running["properties"]["kind"]["enum"] == list(experiments.KINDS)
    for tensor in ("V2MetadataTensor", "V2RequestInput", "V2ResponseOutput"):
        assert schemas[tensor]["properties"]["datatype"]["enum"] == list(v2.DATATYPES)
    feedback = document["paths"]["/v1/models/{name}/feedback"]["post"]["requestBody"]
    many = feedback["content"]["application/json"]["schema"]["oneOf"][1]
    assert many["maxItems"] == live.MAX_FEEDBACK_ITEMS
    name = document["paths"]["/v1/models/{name}"]["get"]["parameters"][0]["schema"]
    assert name["pattern"] == f"^{layout.NAME_PATTERN.pattern}$"


def test_the_data_files_own_keys_are_not_published(document):
    """x-shared, x-failures, x-errors and the like are read, completed and left out; every
    operation gets the request id header once, every answer written out returns it."""
    text = json.dumps(document)
    assert not re.search(r'"x-[a-z-]+":', text)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            names = [p["name"] for p in operation["parameters"]]
            assert names.count("X-Request-ID") == 1, f"{method} {path}"
            for status, response in operation["responses"].items():
                if "$ref" not in response:
                    assert "X-Request-ID" in response["headers"], f"{method} {path} {status}"


# --- per-model schemas ---------------------------------------------------------------

FEATURE_TYPES = {
    IRIS: {
        "sepal_length_cm": "number",
        "sepal_width_cm": "number",
        "petal_length_cm": "number",
        "petal_width_cm": "number",
    },
    DIABETES: {
        "age": "integer",
        "sex": "integer",
        **{name: "number" for name in ("bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")},
    },
}


@pytest.mark.parametrize(("name", "width"), [(IRIS, 4), (CANCER, 30), (DIABETES, 10)])
def test_each_served_model_has_typed_instance_schemas(document, store, name, width):
    schemas = document["components"]["schemas"]
    features = [f["name"] for f in store.metadata(name, 1)["input"]["features"]]
    assert len(features) == width
    instance = schemas[f"{name}.Instance"]
    assert list(instance["properties"]) == features
    assert instance["required"] == features
    assert instance["additionalProperties"] is False
    types = {f: p["type"] for f, p in instance["properties"].items()}
    expected = FEATURE_TYPES.get(name, dict.fromkeys(features, "number"))
    assert types == expected
    for prop in instance["properties"].values():
        assert "Training range" in prop["description"]
        assert "minimum" not in prop and "maximum" not in prop  # documentation, not limits
    row = schemas[f"{name}.Row"]
    assert [p["type"] for p in row["prefixItems"]] == [expected[f] for f in features]
    assert row["minItems"] == row["maxItems"] == width and row["items"] is False


@pytest.mark.parametrize("name", SERVED)
def test_each_served_model_has_a_typed_predict_path(document, name):
    operation = document["paths"][f"/v1/models/{name}/predict"]["post"]
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": f"#/components/schemas/{name}.PredictRequest"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{name}.PredictResponse"
    }
    # The example in the document is a valid body for its own schema.
    component_validator(document, f"{name}.PredictRequest").validate(body["example"])


def test_prediction_schemas_name_the_classes(document, store):
    schemas = document["components"]["schemas"]
    iris = schemas[f"{IRIS}.PredictResponse"]["properties"]
    assert iris["predictions"]["items"]["enum"] == store.metadata(IRIS, 1)["classes"]
    assert iris["classes"]["const"] == ["setosa", "versicolor", "virginica"]
    assert iris["probabilities"]["items"]["minItems"] == 3
    diabetes = schemas[f"{DIABETES}.PredictResponse"]
    assert diabetes["properties"]["predictions"]["items"] == {"type": "number"}
    assert "probabilities" not in diabetes["properties"]


DIABETES_ROW = {
    "age": 59,
    "sex": 2,
    "bmi": 32.1,
    "bp": 101.0,
    "s1": 157,
    "s2": 93.2,
    "s3": 38.0,
    "s4": 4.0,
    "s5": 4.8598,
    "s6": 87,
}


@pytest.mark.parametrize(
    ("name", "body", "valid"),
    [
        (IRIS, {"instances": [IRIS_OBJECT]}, True),
        (IRIS, {"instances": [list(IRIS_OBJECT.values())]}, True),
        (IRIS, {"instances": [{**IRIS_OBJECT, "sepal_width_cm": "3.5"}]}, False),
        (IRIS, {"instances": [[5.5, "3.5", 1.3, 0.2]]}, False),
        (IRIS, {"instances": [{**IRIS_OBJECT, "sepal_widht_cm": 3.5}]}, False),
        (IRIS, {"instances": [list(IRIS_OBJECT.values())[:3]]}, False),
        (IRIS, {"instances": [IRIS_OBJECT, list(IRIS_OBJECT.values())]}, False),
        (IRIS, {"instances": []}, False),
        (IRIS, {"instances": [{**IRIS_OBJECT, "petal_width_cm": None}]}, False),
        (DIABETES, {"instances": [DIABETES_ROW]}, True),
        (DIABETES, {"instances": [{**DIABETES_ROW, "age": 59.5}]}, False),
        (DIABETES, {"instances": [{**DIABETES_ROW, "sex": "2"}]}, False),
    ],
)
def test_the_schema_accepts_what_the_service_accepts(client, document, name, body, valid):
    """A body valid for the per-model schema predicts (200); one that is not is refused
    with a 4xx by the service too."""
    validator = component_validator(document, f"{name}.PredictRequest")
    assert validator.is_valid(body) is valid
    response = client.post(f"/v1/models/{name}/predict", json=body)
    if valid:
        assert response.status_code == 200, response.get_json()
        component_validator(document, f"{name}.PredictResponse").validate(response.get_json())
    else:
        assert 400 <= response.status_code < 500


def test_the_instance_schema_names_the_bad_feature(document):
    validator = component_validator(document, f"{IRIS}.Instance")
    errors = list(validator.iter_errors({**IRIS_OBJECT, "sepal_width_cm": "3.5"}))
    assert [list(e.absolute_path) for e in errors] == [["sepal_width_cm"]]
    assert errors[0].validator == "type"


@pytest.mark.parametrize(
    ("path", "component"),
    [
        ("/v1/models", "ModelList"),
        (f"/v1/models/{IRIS}", "ModelDetail"),
        (f"/v1/models/{DIABETES}/versions/1", "VersionDetail"),
        ("/healthz", "Health"),
        ("/readyz", "Readiness"),
        ("/v2", "V2ServerMetadata"),
        ("/v2/health/live", "V2Live"),
        ("/v2/health/ready", "V2Ready"),
        (f"/v2/models/{CANCER}", "V2ModelMetadata"),
        (f"/v2/models/{IRIS}/versions/1/ready", "V2ModelReady"),
        ("/v1/models/no-such-model", "Error"),
        ("/v2/models/no-such-model", "V2Error"),
    ],
)
def test_real_answers_fit_their_documented_schemas(client, document, path, component):
    response = client.get(path)
    assert response.mimetype == "application/json"
    component_validator(document, component).validate(response.get_json())


def test_mlflow_answers_fit_their_documented_schemas(client, document):
    body = {"dataframe_records": [IRIS_OBJECT]}
    component_validator(document, "MlflowRequest").validate(body)
    response = client.post(f"/v1/models/{IRIS}/invocations", json=body)
    assert response.status_code == 200
    component_validator(document, "MlflowResponse").validate(response.get_json())
    bad = client.post(f"/v1/models/{IRIS}/invocations", json={"dataframe_records": [{"x": 1}]})
    assert bad.status_code == 422
    component_validator(document, "MlflowError").validate(bad.get_json())
    two_formats = {"instances": [IRIS_OBJECT], "inputs": [IRIS_OBJECT]}
    assert not component_validator(document, "MlflowRequest").is_valid(two_formats)


ADMIN_KEY = "openapi-test-admin-key"
TOO_MANY = {"instances": [IRIS_OBJECT] * 11}


def tampered(store_dir):
    (store_dir / IRIS / "1" / "model.pkl").write_bytes(b"tampered")
    return {}


# (kind, method, path, request keywords, settings): a request that gets each kind of failure.
FAILURES = [
    ("BadRequest", "get", "/v1/models/Not_A_Name", {}, {}),
    (
        "BadRequest",
        "post",
        f"/v1/models/{IRIS}/predict",
        {"data": b"{", "content_type": "application/json"},
        {},
    ),
    (
        "Unauthorized",
        "post",
        "/v1/admin/reload",
        {},
        {"admin_key_hashes": [hashlib.sha256(ADMIN_KEY.encode()).hexdigest()]},
    ),
    ("Forbidden", "post", "/v1/admin/reload", {}, {}),
    ("NotFound", "get", "/v1/models/no-such-model", {}, {}),
    ("NotFound", "get", "/v2/models/no-such-model", {}, {}),
    ("Conflict", "post", "/invocations", {"json": {"instances": [IRIS_OBJECT]}}, {}),
    ("TooLarge", "post", f"/v1/models/{IRIS}/predict", {"json": TOO_MANY}, {"max_instances": 10}),
    (
        "TooLarge",
        "post",
        f"/v2/models/{IRIS}/infer",
        {"data": b"x" * 2048, "content_type": "application/json"},
        {"max_body_bytes": 1024},
    ),
    (
        "UnsupportedMediaType",
        "post",
        f"/v1/models/{IRIS}/predict",
        {"data": "x", "content_type": "text/plain"},
        {},
    ),
    (
        "UnsupportedMediaType",
        "post",
        f"/v1/models/{IRIS}/invocations",
        {"data": "x", "content_type": "application/xml"},
        {},
    ),
    ("InvalidInput", "post", f"/v1/models/{IRIS}/predict", {"json": {"instances": [{"x": 1}]}}, {}),
    ("NotReady", "get", "/ping", {}, "tampered"),
]


@pytest.mark.parametrize(("kind", "method", "path", "request_args", "settings"), FAILURES)
def test_each_kind_of_failure_is_produced_as_documented(
    store_dir, tmp_path, kind, method, path, request_args, settings
):
    if settings == "tampered":
        settings = tampered(store_dir)
    app = create_app({"store": store_dir, "state_dir": tmp_path / "state", **settings})
    try:
        client = app.test_client()
        document = client.get("/openapi.json").get_json()
        response = getattr(client, method)(path, **request_args)
        status = openapi.statuses()[kind]
        assert str(response.status_code) == status, response.get_json()
        template = next(
            p for p in document["paths"] if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", p), path)
        )
        declared = document["paths"][template][method]["responses"][status]
        name = declared["$ref"].rsplit("/", 1)[-1]
        assert name.removeprefix("V2").removeprefix("Mlflow") == kind
        schema = document["components"]["responses"][name]["content"]["application/json"]
        root = {**schema["schema"], "components": document["components"]}
        jsonschema.Draft202012Validator(root).validate(response.get_json())
    finally:
        app.extensions["model_service"].registry.stop()


def test_an_unexpected_fault_is_the_documented_500(app, client, document, monkeypatch):
    registry = app.extensions["model_service"].registry
    monkeypatch.setattr(registry, "served_names", lambda: 1 / 0)
    response = client.get("/v1/models")
    assert str(response.status_code) == openapi.statuses()["Internal"] == "500"
    declared = document["paths"]["/v1/models"]["get"]["responses"]["500"]
    assert declared == {"$ref": "#/components/responses/Internal"}
    component_validator(document, "Error").validate(response.get_json())


# --- build_document without Flask --------------------------------------------------------


def categorical_metadata(store) -> dict:
    metadata = copy.deepcopy(store.metadata(IRIS, 1))
    metadata["name"] = "penguins"
    metadata["input"]["features"] = [
        {
            "name": "island",
            "dtype": "category",
            "missing": "allow",
            "categories": ["Biscoe", "Dream"],
            "unknown_category": "reject",
            "fill_value": "missing",
        },
        {
            "name": "colour",
            "dtype": "category",
            "missing": "reject",
            "categories": ["black", "white"],
            "unknown_category": "allow",
            "handle_unknown": "ignore",
        },
        {"name": "mass_g", "dtype": "float64", "missing": "allow"},
    ]
    return metadata


def test_build_document_from_metadata_with_categories(store):
    document = openapi.build_document([categorical_metadata(store)], version="9.9")
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["info"]["version"] == "9.9"
    props = document["components"]["schemas"]["penguins.Instance"]["properties"]
    assert props["island"]["type"] == ["string", "null"]
    assert props["island"]["enum"] == ["Biscoe", "Dream", "missing", None]
    assert props["colour"] == {**props["colour"], "type": "string"}
    assert "enum" not in props["colour"]  # unknown categories are accepted
    assert props["mass_g"]["type"] == ["number", "null"]
    validator = component_validator(document, "penguins.Instance")
    assert validator.is_valid({"island": None, "colour": "grey", "mass_g": None})
    assert not validator.is_valid({"island": "Torgersen", "colour": "black", "mass_g": 1.0})
    assert not validator.is_valid({"island": "Dream", "colour": None, "mass_g": 1.0})


def test_build_document_wants_one_model_per_name(store):
    metadata = store.metadata(IRIS, 1)
    with pytest.raises(ValueError, match="twice"):
        openapi.build_document([metadata, metadata], version="1")


def test_path_template():
    assert openapi.path_template("/v1/models/<name>/versions/<int:version>/card") == (
        "/v1/models/{name}/versions/{version}/card"
    )
    assert openapi.path_template("/healthz") == "/healthz"


# --- caching ---------------------------------------------------------------------------


def test_document_is_built_once_per_set_of_served_models(app, client, monkeypatch):
    built = []
    real = openapi.build_document

    def counting(served, **kwargs):
        built.append(sorted(m.name for m in served))
        return real(served, **kwargs)

    monkeypatch.setattr(openapi, "build_document", counting)
    first = client.get("/openapi.json").data
    assert client.get("/openapi.json").data == first
    assert client.get("/docs").status_code == 200
    assert built == [sorted(SERVED)]

    registry = app.extensions["model_service"].registry
    monkeypatch.setattr(registry, "served_names", lambda: [IRIS])
    narrowed = client.get("/openapi.json").get_json()
    assert built == [sorted(SERVED), [IRIS]]
    assert f"/v1/models/{IRIS}/predict" in narrowed["paths"]
    assert f"/v1/models/{DIABETES}/predict" not in narrowed["paths"]
    assert f"{DIABETES}.Instance" not in narrowed["components"]["schemas"]


# --- /docs ---------------------------------------------------------------------------------


def test_docs_page_shows_every_path_and_every_feature(client, document, store):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    for path in document["paths"]:
        assert f'<span class="path">{path}</span>' in html, path
    for name in SERVED:
        section = html[html.index(f'id="model-{name}"') :]
        section = section[: section.index("</section>")]
        for feature in store.metadata(name, 1)["input"]["features"]:
            assert f"<code>{feature['name']}</code>" in section
        assert f"/v1/models/{name}/predict" in section
        assert "curl -s -X POST" in section
    for tag in ("native", "models", "admin", "v2", "mlflow", "health", "docs"):
        assert f'id="tag-{tag}"' in html


def test_docs_page_loads_nothing_from_elsewhere(client):
    response = client.get("/docs")
    html = response.get_data(as_text=True)
    assert 'src="http' not in html and 'href="http' not in html
    assert "<script" not in html and "<link" not in html and "@import" not in html
    policy = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["style-src"] == "'unsafe-inline'"
    assert "script-src" not in directives
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_docs_curl_example_predicts(client):
    """The curl example's body, sent as it is, gets a prediction."""
    html = client.get("/docs").get_data(as_text=True)
    section = html[html.index(f'id="model-{IRIS}"') :]
    example = section[section.index("<pre>") + 5 : section.index("</pre>")]
    words = shlex.split(html_module.unescape(example).replace("\\\n", " "))
    assert words[:4] == ["curl", "-s", "-X", "POST"]
    url, body = words[4], json.loads(words[words.index("-d") + 1])
    assert url == f"http://localhost/v1/models/{IRIS}/predict"
    response = client.post(url.removeprefix("http://localhost"), json=body)
    assert response.status_code == 200
    assert response.get_json()["predictions"] == ["setosa"]


def test_docs_escape_what_the_metadata_says(store):
    metadata = categorical_metadata(store)
    metadata["description"] = "<script>alert(1)</script>"
    metadata["input"]["features"][0]["categories"] = ["<b>x</b>", "Dream"]
    document = openapi.build_document([metadata], version="1")
    html = openapi.render_html(document, [metadata], base_url="http://example.test/")
    assert "<script>" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;" in html


def test_integral_floats_are_the_integers_the_schemas_say(store_dir, tmp_path):
    """JSON Schema's integer takes 1.0; so do the routes whose schemas say integer."""
    key = KeyRing(store_dir).create("operator", ["admin", "feedback"])
    app = create_app({"store": store_dir, "state_dir": tmp_path / "state"})
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {key}"}
        document = client.get("/openapi.json").get_json()
        promote = {"version": 1.0, "alias": "staging"}
        assert component_validator(document, "PromoteRequest").is_valid(promote)
        response = client.post(f"/v1/admin/models/{IRIS}/promote", json=promote, headers=headers)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["version"] == 1
        predicted = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [IRIS_OBJECT]})
        label = {"request_id": predicted.headers["X-Request-ID"], "index": 0.0, "label": "setosa"}
        response = client.post(f"/v1/models/{IRIS}/feedback", json=label, headers=headers)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["feedback"][0]["index"] == 0
    finally:
        app.extensions["model_service"].registry.stop()
