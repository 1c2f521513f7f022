"""The bare onnxruntime handler, the reference of `make bench`'s P1 and P3.

The tightest JSON handler on the compiled model: it loads one demo model's
``model.onnx`` at import, from the path in BENCH_NAIVE_ONNX, reads a
``{"instances": [[...], ...]}`` body (rows as lists, in feature order) with orjson,
makes one onnxruntime ``run`` and answers ``{"predictions": [...]}`` with orjson: no
validation, no probabilities, no metrics, no request log, no request ids and no store.
The service does all of that on top of the same onnxruntime call, so this handler's rate
is the most it can reach; what lies between the two is the cost of that work. Served
exactly like model-service:

    LocalStack(app="loadtests.naive_onnx_app:app", extra_env={"BENCH_NAIVE_ONNX": path}, ...)

With BENCH_NAIVE_ONNX_PROBABILITIES=1 it also asks a classifier's graph for its
probabilities and answers them as the service does (``"probabilities": [[...], ...]``,
written from onnxruntime's array): the service's answer at the bare handler's cost.
"""

from __future__ import annotations

import os

import numpy as np
import orjson
from flask import Flask, Response, request

from loadtests.benchlib.onnx_reference import open_session
from loadtests.hello_app import add_health_routes

PROBABILITIES_ENV = "BENCH_NAIVE_ONNX_PROBABILITIES"

session = open_session()
input_name = session.get_inputs()[0].name
# The labels (or values) only: the first output; with probabilities, the second too.
with_probabilities = os.environ.get(PROBABILITIES_ENV) == "1" and len(session.get_outputs()) > 1
answered = session.get_outputs()[:2] if with_probabilities else session.get_outputs()[:1]
output_names = [output.name for output in answered]

app = Flask("naive-onnx")


@app.post("/predict")
def predict():
    rows = np.asarray(orjson.loads(request.get_data(cache=False))["instances"], dtype=np.float64)
    outputs = session.run(output_names, {input_name: rows})
    labels = outputs[0].reshape(-1)
    # orjson writes numeric arrays itself; string labels come as Python strings.
    answer = {"predictions": labels.tolist() if labels.dtype == object else labels}
    if with_probabilities:
        answer["probabilities"] = outputs[1]
    body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, mimetype="application/json")


add_health_routes(app)
