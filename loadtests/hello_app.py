"""The ceiling reference for `make bench`: a Flask app that does no model work.

It is served exactly like model-service (same Gunicorn config, same Nginx), so its
throughput and latency are what Nginx + Gunicorn + Flask cost on this machine; the
benchmark reports each model's figures as a fraction of these. ``/predict-hello``
parses a one-row body with Flask's ``get_json``. The bounds of the 1,000-row figures:
``/parse-hello`` reads and parses a body with the service's JSON parser (orjson),
what any JSON handler pays before it validates or predicts; ``/read-hello`` only
reads it (binary tensors).

    LocalStack(app="loadtests.hello_app:app", ...)   # from the repository root
"""

from __future__ import annotations

import orjson
from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask("hello")

    @app.post("/predict-hello")
    def predict_hello():
        # Parse the body like a real endpoint would, so JSON decoding is part of the ceiling.
        payload = request.get_json()
        instances = payload.get("instances", []) if isinstance(payload, dict) else []
        return jsonify(message="hello", instances=len(instances))

    @app.post("/parse-hello")
    def parse_hello():
        # What any JSON endpoint pays for a many-row body before it validates or predicts:
        # reading it and parsing it with orjson, the service's own parser.
        payload = orjson.loads(request.get_data(cache=False))
        instances = payload.get("instances", []) if isinstance(payload, dict) else []
        return jsonify(message="hello", instances=len(instances))

    @app.post("/read-hello")
    def read_hello():
        # Reading a body it never parses: the bound of binary tensor bodies.
        return jsonify(message="hello", bytes=len(request.get_data(cache=False)))

    add_health_routes(app)
    return app


def add_health_routes(app: Flask) -> None:
    """What LocalStack waits for (/readyz, through Gunicorn, then Nginx) before it reports
    a stack ready, for the bench's reference apps."""

    @app.get("/readyz")
    def readyz():
        return jsonify(status="ready")

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")


app = create_app()
