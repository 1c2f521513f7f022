"""The naive handler on the compiled model, a reference for `make bench` (P1, P2).

What a ten-line service reaches when it runs the model through onnxruntime instead of
the pickle: it loads one demo model's ``model.onnx`` at import, from the path in
BENCH_NAIVE_ONNX, and answers ``{"predictions": [...], "probabilities": [...]}`` for
``{"instances": [[...], ...]}`` (rows as lists, in feature order), with no validation,
no metrics, no request log, no request ids and no store. The service does all of that
on top of the same onnxruntime call, so this handler's rate is the most it can reach;
what lies between the two is the cost of that work. Served exactly like model-service:

    LocalStack(app="loadtests.naive_onnx_app:app", extra_env={"BENCH_NAIVE_ONNX": path}, ...)
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime
from flask import Flask, jsonify, request

from loadtests.hello_app import add_health_routes

MODEL_PATH_ENV = "BENCH_NAIVE_ONNX"

# One thread per worker, as the service runs its sessions.
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
with open(os.environ[MODEL_PATH_ENV], "rb") as handle:
    session = onnxruntime.InferenceSession(
        handle.read(), options, providers=["CPUExecutionProvider"]
    )
input_name = session.get_inputs()[0].name
output_names = [output.name for output in session.get_outputs()][:2]

app = Flask("naive-onnx")


@app.post("/predict")
def predict():
    rows = np.asarray(request.get_json()["instances"], dtype=np.float64)
    outputs = session.run(output_names, {input_name: rows})
    answer = {"predictions": outputs[0].reshape(-1).tolist()}
    if len(outputs) > 1:
        answer["probabilities"] = outputs[1].tolist()
    return jsonify(answer)


add_health_routes(app)
