"""The naive reference for `make bench`: what a model service written in ten lines does.

It unpickles one model at import, from the path in BENCH_NAIVE_MODEL, and answers
``{"predictions": model.predict(instances).tolist()}`` for ``{"instances": [[...], ...]}``
(rows as lists, in feature order): no validation, no metrics, no request log, no
probabilities, no store. Everything model-service itself never does (a model loaded
as a global at import, a pickle path from the environment) is deliberate here: it is
a benchmark reference only, pointed at a model.pkl the bench has just trained into its
own temporary store. It is served exactly like model-service (same Gunicorn config,
worker count and Nginx):

    LocalStack(app="loadtests.naive_app:app", extra_env={"BENCH_NAIVE_MODEL": path}, ...)
"""

from __future__ import annotations

import os
import pickle

from flask import Flask, jsonify, request

from loadtests.hello_app import add_health_routes

MODEL_PATH_ENV = "BENCH_NAIVE_MODEL"

with open(os.environ[MODEL_PATH_ENV], "rb") as handle:
    model = pickle.load(handle)  # the bench's own freshly trained pickle, nothing else

app = Flask("naive")


@app.post("/predict")
def predict():
    instances = request.get_json()["instances"]
    return jsonify(predictions=model.predict(instances).tolist())


add_health_routes(app)
