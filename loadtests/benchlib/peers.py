"""MLflow's own scoring server, an optional peer (`make bench-peers` installs it in a
virtualenv of its own): the same pickles as MLflow models, served by
`mlflow models serve`, stopped by process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from service.localstack import free_port

from .payloads import DemoPayload
from .settings import LOOPBACK, BenchError, progress

PEERS_HINT = "not installed (make bench-peers)"
PEER_READY_TIMEOUT_S = 120.0
PEER_BUILD_TIMEOUT_S = 300.0
MLFLOW_BUILD_SCRIPT = """\
import json, pickle, shutil, sys
import mlflow.sklearn

for source, target in json.loads(sys.argv[1]):
    with open(source, "rb") as handle:
        model = pickle.load(handle)
    mlflow.sklearn.save_model(
        model, target, serialization_format="pickle", pip_requirements=["scikit-learn"]
    )
    # Serve the very bytes model-service and the naive handler load.
    shutil.copyfile(source, target + "/model.pkl")
"""


def peers_env(venv: Path) -> dict[str, str]:
    env = dict(os.environ)
    # `mlflow models serve` execs uvicorn by name.
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    env.pop("PYTHONPATH", None)
    return env


def mlflow_version(venv: Path) -> str | None:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        env=peers_env(venv),
        check=False,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def build_mlflow_models(
    venv: Path, folder: Path, payloads: dict[str, DemoPayload]
) -> dict[str, Path]:
    """MLflow model directories (sklearn flavor) around the same pickles, built once."""
    dirs = {name: folder / name for name in payloads}
    if all((d / "MLmodel").exists() for d in dirs.values()):
        return dirs
    progress("building MLflow model directories from the same pickles")
    pairs = [[str(p.pickle_path), str(dirs[name])] for name, p in payloads.items()]
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", MLFLOW_BUILD_SCRIPT, json.dumps(pairs)],
        capture_output=True,
        text=True,
        timeout=PEER_BUILD_TIMEOUT_S,
        env=peers_env(venv),
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"building the MLflow models failed: {done.stderr[-2000:]}")
    return dirs


@contextlib.contextmanager
def mlflow_servers(
    venv: Path, model_dirs: dict[str, Path], workdir: Path
) -> Iterator[dict[str, str]]:
    """`mlflow models serve -w 2 --env-manager local` per model on free loopback ports,
    started together (they idle while another is measured), each in a session of its
    own; stopped by process group id (uvicorn and its workers are in it)."""
    processes: dict[str, tuple[subprocess.Popen, str, Path]] = {}
    try:
        for name, model_dir in model_dirs.items():
            port = free_port()
            log_path = workdir / f"mlflow-{name}.log"
            command = [str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(model_dir)]
            command += ["-w", "2", "--env-manager", "local", "-h", LOOPBACK, "-p", str(port)]
            progress(f"starting mlflow models serve for {name} on {LOOPBACK}:{port}")
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    command,
                    env=peers_env(venv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            processes[name] = (process, f"http://{LOOPBACK}:{port}", log_path)
        deadline = time.monotonic() + PEER_READY_TIMEOUT_S
        for process, base_url, log_path in processes.values():
            wait_for_ping(process, base_url, log_path, deadline)
        yield {name: base_url for name, (_, base_url, _) in processes.items()}
    finally:
        for process, _, _ in processes.values():
            stop_process_group(process)


def wait_for_ping(
    process: subprocess.Popen, base_url: str, log_path: Path, deadline: float
) -> None:
    while True:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise BenchError(f"mlflow models serve exited ({process.returncode}):\n{tail}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(base_url + "/ping", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"mlflow models serve was not ready in {PEER_READY_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the session the bench started (its leader's pid is the group id), then
    SIGKILL to what is left of it after the timeout."""
    group = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            process.poll()
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait(timeout=5)
