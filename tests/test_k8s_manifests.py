"""deploy/k8s and the Dockerfile, checked offline: nothing here builds an image or talks to a
cluster (deploy/k8s/README.md says so).

Every manifest is validated against the Kubernetes JSON schemas that kubernetes-validate
ships inside its package (strict: an unknown or misspelt field fails), and the parts the
schemas cannot see are checked against each other and against the code: probes on
/healthz and /readyz, non-root containers, selectors that match the pods, Secrets and
ConfigMaps that exist, every MODEL_SERVICE_* variable a real setting, and a Dockerfile with
a builder stage, a non-root user and a health check that works.
"""

from __future__ import annotations

import ast
import dataclasses
import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import ENV_PREFIX, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S = REPO_ROOT / "deploy" / "k8s"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
GUNICORN_CONF = REPO_ROOT / "deploy" / "gunicorn.conf.py"
KUSTOMIZATION = K8S / "kustomization.yaml"
# Placeholders only: kept out of the kustomization, validated like the rest.
EXAMPLE_SECRET = K8S / "secret.example.yaml"

# The oldest Kubernetes the manifests are for (sidecar containers: init containers with
# restartPolicy Always, on by default since 1.29) and the newest the package has schemas for.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
# The image's user (Dockerfile: useradd --uid), which the pods' securityContext names.
IMAGE_UID = 10001
# A startup probe must give Gunicorn this long to load the models before it listens.
MIN_STARTUP_SECONDS = 120


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


MANIFEST_FILES = sorted(path for path in K8S.glob("*.yaml") if path != KUSTOMIZATION)
MANIFESTS = [
    (path, index, doc) for path in MANIFEST_FILES for index, doc in enumerate(_documents(path))
]


def _only(kind: str, *, include_example: bool = False) -> list[dict[str, Any]]:
    return [
        doc
        for path, _, doc in MANIFESTS
        if doc["kind"] == kind and (include_example or path != EXAMPLE_SECRET)
    ]


def _one(kind: str) -> dict[str, Any]:
    (doc,) = _only(kind)
    return doc


def _pod_spec() -> dict[str, Any]:
    return _one("Deployment")["spec"]["template"]["spec"]


def _containers() -> list[dict[str, Any]]:
    spec = _pod_spec()
    return spec.get("initContainers", []) + spec["containers"]


def _container(name: str) -> dict[str, Any]:
    (container,) = [c for c in _containers() if c["name"] == name]
    return container


def _pod_labels() -> dict[str, str]:
    return _one("Deployment")["spec"]["template"]["metadata"]["labels"]


def _quantity_cores(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- the schemas ------------------------------------------------------------------------


def test_there_is_something_to_validate():
    kinds = {doc["kind"] for _, _, doc in MANIFESTS}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
    } <= kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("path", "index", "doc"),
    MANIFESTS,
    ids=[f"{path.name}#{index}" for path, index, _ in MANIFESTS],
)
def test_manifest_matches_the_kubernetes_schema(path, index, doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(
            f"{path.name} #{index} ({doc['kind']}), Kubernetes {version}: {where}: {exc.message}"
        )


def test_the_validator_refuses_a_misspelt_field():
    # The check above would pass vacuously if strict mode let unknown fields through.
    service = json.loads(json.dumps(_one("Service")))
    service["spec"]["ports"][0]["targetPrt"] = 8000
    with pytest.raises(kubernetes_validate.ValidationError, match="targetPrt"):
        kubernetes_validate.validate(service, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization = _documents(KUSTOMIZATION)[0]
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    expected = {path.name for path in MANIFEST_FILES} - {EXAMPLE_SECRET.name}
    assert set(resources) == expected
    images = {container["image"].split(":")[0] for container in _containers()}
    assert {image["name"] for image in kustomization["images"]} == images


def test_example_secrets_hold_placeholders_only():
    for secret in _only("Secret", include_example=True):
        assert "data" not in secret, "placeholders go in stringData, readable as such"
        for key, value in secret["stringData"].items():
            assert "PLACEHOLDER" in value, f"{secret['metadata']['name']}.{key}"
            assert "PRIVATE KEY-----" not in value


# --- probes and resources ---------------------------------------------------------------


def test_server_probes_use_readyz_and_healthz():
    server = _container("server")
    port_names = {port["name"] for port in server["ports"]}
    probes = {kind: server[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    startup = server["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    for probe in (*probes.values(), startup["httpGet"]):
        assert probe["port"] in port_names | {8000}


@pytest.mark.parametrize("name", ["server", "grpc", "store-sync"])
def test_startup_probe_is_generous_enough_for_model_loading(name):
    startup = _container(name)["startupProbe"]
    seconds = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert seconds >= MIN_STARTUP_SECONDS


def test_store_sync_is_a_sidecar_running_store_sync():
    sync = _container("store-sync")
    # An init container that keeps running: started before the servers, never finishing.
    assert sync in _pod_spec()["initContainers"]
    assert sync["restartPolicy"] == "Always"
    assert sync["command"][:2] == ["modelctl", "store-sync"]


def test_every_container_has_requests_and_limits():
    for container in _containers():
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (container["name"], kind)
        requested = _quantity_cores(resources["requests"]["cpu"])
        assert requested <= _quantity_cores(resources["limits"]["cpu"])


def test_gunicorn_workers_match_the_cpu_limit():
    # In a container os.cpu_count() is the node's, so the worker count must be set.
    server = _container("server")
    workers = int(_env(server)[ENV_PREFIX + "WORKERS"])
    assert workers == _quantity_cores(server["resources"]["limits"]["cpu"])


# --- security -----------------------------------------------------------------------------


def test_pod_runs_as_the_image_user():
    context = _pod_spec()["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == IMAGE_UID
    assert context["runAsGroup"] == IMAGE_UID
    assert _pod_spec()["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", ["server", "grpc", "store-sync"])
def test_container_is_locked_down(name):
    container = _container(name)
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context.get("runAsUser", IMAGE_UID) != 0
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "privileged" not in context or context["privileged"] is False
    # A read-only root needs a writable /tmp, from an emptyDir.
    volumes = {volume["name"]: volume for volume in _pod_spec()["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]


# The containers that reach the authoritative store: store-sync mirrors it, and the HTTP
# server's admin API promotes and rolls back on it. The gRPC server only reads the mirror.
STORE_CLIENTS = {"store-sync", "server"}


def test_the_store_key_is_read_only_and_only_where_the_store_is_reached():
    volumes = {volume["name"]: volume for volume in _pod_spec()["volumes"]}
    for container in _containers():
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        secret_mounts = [name for name in mounts if "secret" in volumes[name]]
        for name in secret_mounts:
            assert mounts[name].get("readOnly") is True, (container["name"], name)
        assert bool(secret_mounts) == (container["name"] in STORE_CLIENTS), container["name"]


def test_only_store_sync_writes_the_mirror():
    volumes = {volume["name"]: volume for volume in _pod_spec()["volumes"]}
    assert "emptyDir" in volumes["store"]
    for container in _containers():
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "store"]
        assert mount["mountPath"] == _one("ConfigMap")["data"][ENV_PREFIX + "STORE"]
        writable = not mount.get("readOnly", False)
        assert writable == (container["name"] == "store-sync"), container["name"]


def test_mounts_and_volumes_agree():
    volumes = {volume["name"] for volume in _pod_spec()["volumes"]}
    mounted = {m["name"] for c in _containers() for m in c.get("volumeMounts", [])}
    assert mounted == volumes


# --- selectors and references -------------------------------------------------------------


def test_deployment_selector_matches_its_pods():
    selector = _one("Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= _pod_labels().items()


def test_service_selects_the_pods_and_targets_their_ports():
    service = _one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= _pod_labels().items()
    container_ports = {
        port["name"]: port["containerPort"] for c in _containers() for port in c.get("ports", [])
    }
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert ports["http"]["port"] == 80
    assert container_ports[ports["http"]["targetPort"]] == 8000
    assert ports["grpc"]["port"] == 8001
    assert container_ports[ports["grpc"]["targetPort"]] == 8001


def test_hpa_scales_the_deployment_on_cpu():
    hpa = _one("HorizontalPodAutoscaler")
    deployment = _one("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_pdb_selects_the_pods_and_leaves_one_serving():
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= _pod_labels().items()
    assert pdb["spec"]["selector"] == _one("Deployment")["spec"]["selector"]
    min_replicas = _one("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    if "maxUnavailable" in pdb["spec"]:
        assert pdb["spec"]["maxUnavailable"] < min_replicas
    else:
        assert 1 <= pdb["spec"]["minAvailable"] < min_replicas


def test_referenced_configmaps_and_secrets_exist_with_their_keys():
    configmaps = {doc["metadata"]["name"]: doc["data"] for doc in _only("ConfigMap")}
    secrets = {
        doc["metadata"]["name"]: doc["stringData"] for doc in _only("Secret", include_example=True)
    }
    for container in _containers():
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in configmaps
        for variable in container.get("env", []):
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]], variable["name"]
    secret_files = {}
    for volume in _pod_spec()["volumes"]:
        if "secret" in volume:
            secret_files[volume["name"]] = set(secrets[volume["secret"]["secretName"]])
    # The key and known_hosts files the settings name are keys of the Secret mounted there.
    settings = _one("ConfigMap")["data"]
    for name in sorted(STORE_CLIENTS):
        container = _container(name)
        for setting in ("STORE_REMOTE_KEY", "STORE_REMOTE_KNOWN_HOSTS"):
            path = Path({**settings, **_env(container)}[ENV_PREFIX + setting])
            mounts = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
            assert len(mounts) == 1, (name, setting)
            assert path.name in secret_files[mounts[0]["name"]], (name, setting)


# --- settings -----------------------------------------------------------------------------


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {variable["name"]: variable.get("value", "") for variable in container.get("env", [])}


def _gunicorn_knobs() -> set[str]:
    """The MODEL_SERVICE_* variables the top of deploy/gunicorn.conf.py documents."""
    docstring = ast.get_docstring(ast.parse(GUNICORN_CONF.read_text(encoding="utf-8")))
    knobs = set(re.findall(r"^\s+(MODEL_SERVICE_[A-Z][A-Z0-9_]*)\s", docstring, re.MULTILINE))
    assert ENV_PREFIX + "BIND" in knobs and ENV_PREFIX + "WORKERS" in knobs
    return knobs


def _known_variables() -> set[str]:
    settings = {ENV_PREFIX + field.name.upper() for field in dataclasses.fields(Settings)}
    # Settings.load reads the YAML file this one names.
    return settings | _gunicorn_knobs() | {ENV_PREFIX + "CONFIG"}


def _dockerfile_env() -> dict[str, str]:
    variables = {}
    for instruction, arguments in _dockerfile_instructions():
        if instruction == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                variables[name] = value
    return variables


def _used_variables() -> dict[str, str]:
    """Every variable the manifests and the Dockerfile set, with where it is set."""
    used = {}
    for container in _containers():
        for name in _env(container):
            used[name] = f"deployment.yaml, container {container['name']}"
    for configmap in _only("ConfigMap"):
        for name in configmap["data"]:
            used[name] = f"ConfigMap {configmap['metadata']['name']}"
    for name in _dockerfile_env():
        used[name] = "Dockerfile"
    return used


def test_every_model_service_variable_is_a_real_setting():
    known = _known_variables()
    used = _used_variables()
    unknown = {
        name: where
        for name, where in used.items()
        if name.startswith(ENV_PREFIX) and name not in known
    }
    assert not unknown, f"not a setting nor a gunicorn.conf.py knob: {unknown}"
    # The check has teeth: the manifests do set settings and knobs.
    assert {ENV_PREFIX + "STORE", ENV_PREFIX + "WORKERS", ENV_PREFIX + "BIND"} <= set(used)


def test_settings_in_the_manifests_load():
    # Values as well as names: what each container gets parses as its Settings would.
    configmap = _one("ConfigMap")["data"]
    for container in _containers():
        environ = {**_dockerfile_env(), **configmap, **_env(container)}
        fields = {ENV_PREFIX + field.name.upper() for field in dataclasses.fields(Settings)}
        environ = {name: value for name, value in environ.items() if name in fields}
        Settings.load(environ=environ)


# --- the Dockerfile -----------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        instruction, _, arguments = whole.partition(" ")
        instructions.append((instruction.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends in a continuation"
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in _dockerfile_instructions():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments))
    return stages


def _last(stage: list[tuple[str, str]], instruction: str) -> str:
    values = [arguments for name, arguments in stage if name == instruction]
    assert values, f"no {instruction} in the stage"
    return values[-1]


def test_dockerfile_builds_wheels_in_a_stage_of_its_own():
    stages = _stages()
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert re.search(r"\bAS\s+builder\b", builder[0][1], re.IGNORECASE)
    builder_runs = " ".join(arguments for name, arguments in builder if name == "RUN")
    assert re.search(r"pip wheel .*-c constraints\.txt .*\.", builder_runs)
    runtime_runs = " ".join(arguments for name, arguments in runtime if name == "RUN")
    assert "--no-index" in runtime_runs
    assert "from=builder" in runtime_runs or any(
        name == "COPY" and "--from=builder" in arguments for name, arguments in runtime
    )
    base_images = {_args_image(stage[0][1]) for stage in stages}
    assert base_images == {"python:3.11-slim"}


def _args_image(from_arguments: str) -> str:
    image = from_arguments.split()[0]
    defaults = dict(
        arguments.partition("=")[::2]
        for name, arguments in _dockerfile_instructions()
        if name == "ARG" and "=" in arguments
    )
    match = re.fullmatch(r"\$\{(\w+)\}", image)
    return defaults[match.group(1)] if match else image


def test_dockerfile_runs_as_the_non_root_user():
    runtime = _stages()[-1]
    user = _last(runtime, "USER").split(":")[0]
    assert user not in {"root", "0"}
    runs = " ".join(arguments for name, arguments in runtime if name == "RUN")
    assert re.search(rf"useradd .*--uid {IMAGE_UID} .*\b{user}\b", runs)


def test_dockerfile_exposes_http_and_grpc():
    exposed = {port for name, args in _stages()[-1] if name == "EXPOSE" for port in args.split()}
    assert exposed == {"8000", "8001"}


def _healthcheck_command() -> list[str]:
    healthcheck = _last(_stages()[-1], "HEALTHCHECK")
    _, _, command = healthcheck.partition(" CMD ")
    return json.loads(command)


def test_dockerfile_healthcheck_asks_healthz_with_python():
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    assert "curl" not in _last(_stages()[-1], "HEALTHCHECK")


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_dockerfile_healthcheck_command_works(status, healthy):
    # The command itself, run against a stand-in for the server: exit status 0 on a 200
    # from /healthz, non-zero otherwise (Docker's meaning of healthy and unhealthy).
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _, code = _healthcheck_command()[1:]
        port = server.server_address[1]
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={"MODEL_SERVICE_BIND": f"0.0.0.0:{port}"},
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr.decode()


def test_dockerfile_starts_gunicorn_with_the_packaged_config():
    command = json.loads(_last(_stages()[-1], "CMD"))
    assert command[:2] == ["sh", "-c"]
    script = command[2]
    assert 'exec gunicorn -c "$(modelctl deploy-path gunicorn.conf.py)" service.wsgi:app' in (
        script
    )
    # The metrics directory: under /tmp, emptied before Gunicorn starts.
    assert re.search(r"PROMETHEUS_MULTIPROC_DIR=/tmp/\S+", script)
    assert script.index("rm -rf") < script.index("exec gunicorn")
    subprocess.run(["sh", "-n", "-c", script], check=True)
    env = _dockerfile_env()
    assert env[ENV_PREFIX + "BIND"] == "0.0.0.0:8000"
    assert env[ENV_PREFIX + "STORE"] == "/var/lib/model-service/store"


def test_dockerignore_keeps_local_state_out_of_the_context():
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "model_store", ".monitoring", ".run"} <= patterns
    # What `pip wheel .` reads must stay in.
    for needed in ("service", "setup.cfg", "pyproject.toml", "README.md", "constraints.txt"):
        assert needed not in patterns
