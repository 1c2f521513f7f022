"""The onnxruntime session of the bench's reference handlers (loadtests/naive_onnx_app.py
and loadtests/duties_app.py): the demo model's ``model.onnx`` at the path in
BENCH_NAIVE_ONNX, opened with one thread per worker, as the service opens its sessions."""

from __future__ import annotations

import os

import onnxruntime

MODEL_PATH_ENV = "BENCH_NAIVE_ONNX"
# Where duties_app.py writes its request log (default: nowhere, /dev/null).
DUTIES_LOG_ENV = "BENCH_DUTIES_LOG"
# duties_app.py's route for the Open Inference Protocol's binary tensor extension.
DUTIES_BINARY_PATH = "/infer-binary"


def open_session() -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    with open(os.environ[MODEL_PATH_ENV], "rb") as handle:
        return onnxruntime.InferenceSession(
            handle.read(), options, providers=["CPUExecutionProvider"]
        )
