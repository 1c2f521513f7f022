"""A server-only install (`pip install model-service`, without the training extra) serves:
the server's code never imports what only training needs (the ONNX converter, the card's
plots), the card renders without its plots, and training says which extra to install.

Each check runs in a fresh interpreter, so what this process imported does not count. A
server-only install is played by making those packages unimportable there (None in
sys.modules, as Python does for a module that is not installed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import IRIS, IRIS_ROW

# The packages of setup.cfg's training extra (and what they bring in).
TRAINING_ONLY = ("skl2onnx", "onnx", "matplotlib")
NOT_INSTALLED = f"import sys\nfor name in {TRAINING_ONLY!r}:\n    sys.modules[name] = None\n"


def run_python(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def server_env(store_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "MODEL_SERVICE_STORE": str(store_dir),
        "MODEL_SERVICE_STATE_DIR": str(tmp_path / "state"),
    }


# Every way the server runs: modelctl (serve, gate, store-sync...), the Gunicorn target and
# its routes, and the gRPC server, with a model served through onnxruntime.
SERVER_PATHS = """
import json, sys

import service.cli
import service.store_host
import service.wsgi
from service.config import Settings
from service.grpc.server import create_server

client = service.wsgi.app.test_client()
row = json.loads(sys.argv[1])
predicted = client.post(f"/v1/models/{sys.argv[2]}/predict", json={"instances": [row]})
v2 = client.post(
    f"/v2/models/{sys.argv[2]}/infer",
    json={"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": row}]},
)
statuses = [predicted.status_code, v2.status_code] + [
    client.get(path).status_code
    for path in ("/v1/models", "/status", "/metrics", "/openapi.json", "/v2/health/ready")
]
server, registry, _ = create_server(Settings.load(), address="127.0.0.1:0")
server.stop(None)
registry.stop()
training_only = set(json.loads(sys.argv[3]))
imported = sorted(name for name in sys.modules if name.partition(".")[0] in training_only)
print(json.dumps({
    "statuses": statuses,
    "backend": predicted.get_json()["backend"],
    "training_only": imported,
    "onnx_convert": "service.training.onnx_convert" in sys.modules,
}))
"""


def test_the_server_never_imports_what_only_training_needs(store_dir, tmp_path):
    result = run_python(
        SERVER_PATHS,
        json.dumps(IRIS_ROW),
        IRIS,
        json.dumps(TRAINING_ONLY),
        env=server_env(store_dir, tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["statuses"] == [200] * 7
    assert seen["backend"] == "onnxruntime"
    assert seen["training_only"] == []
    assert seen["onnx_convert"] is False


def test_without_the_extra_the_card_renders_without_its_plots(store_dir, tmp_path):
    code = NOT_INSTALLED + textwrap.dedent(
        """
        import service.wsgi

        answer = service.wsgi.app.test_client().get(f"/v1/models/{sys.argv[1]}/card")
        print(answer.status_code)
        print(answer.get_data(as_text=True))
        """
    )
    result = run_python(code, IRIS, env=server_env(store_dir, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    status, _, page = result.stdout.partition("\n")
    assert status == "200"
    assert "matplotlib is not installed" in page
    assert "<svg" not in page
    assert IRIS in page


def test_training_without_the_extra_says_what_to_install(store_dir, tmp_path):
    code = NOT_INSTALLED + "from service.cli import run\nsys.argv[0] = 'modelctl'\nrun()\n"
    for args in (
        ["train-demo", "--store", str(tmp_path / "new_store")],
        ["optimize", f"{IRIS}@1", "--store", str(store_dir)],
    ):
        result = run_python(code, *args)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert re.fullmatch(
            r"modelctl: Training a model or converting it to ONNX needs the training extra, "
            r"and (skl2onnx|onnx) is not installed here: pip install 'model-service\[training\]'",
            line,
        ), line
