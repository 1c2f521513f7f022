"""Signed versions through the running stack (Nginx -> Gunicorn, trusting one public key):
a tampered version promoted to production is refused before unpickling, the old version
keeps answering, and the refusal shows in /metrics and the log."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from service.store import ModelStore
from tests.signing_support import edit_metadata, key_pair, replace_pickle_and_its_sha256, republish
from tests.support import IRIS, IRIS_ROW, eventually, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("stack-keys")
    return {"trusted": key_pair(base / "trusted"), "other": key_pair(base / "other")}


@pytest.fixture(scope="module")
def stack(trained_store_dir, tmp_path_factory, keys):
    def sign_the_store(stack) -> None:
        store = ModelStore(stack.store, signing_key=keys["trusted"][0])
        for name in store.names():
            store.sign(name, 1)

    env = {
        "MODEL_SERVICE_RELOAD_INTERVAL": "0.1",
        "MODEL_SERVICE_TRUSTED_SIGNING_KEYS": str(keys["trusted"][1]),
    }
    with running_stack(
        tmp_path_factory.mktemp("signed"),
        store_from=trained_store_dir,
        env=env,
        before_start=sign_the_store,
    ) as started:
        yield started


def refusals(stack, version: int, reason: str) -> float:
    text = requests.get(f"{stack.url}/metrics", timeout=10).text
    wanted = (
        f'model_service_signature_refusals_total{{model="{IRIS}",reason="{reason}",'
        f'version="{version}"}} '
    )
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


@pytest.mark.parametrize(
    ("tamper", "signer", "reason", "logged"),
    [
        ("pickle_and_sha256", "trusted", "mismatch", "changed: metadata.yaml, model.pkl"),
        ("metadata", "trusted", "mismatch", "changed: metadata.yaml"),
        (None, "other", "untrusted_key", "signed by a key that is not trusted"),
    ],
)
def test_a_tampered_production_version_is_refused_and_the_old_one_keeps_serving(
    stack, keys, tmp_path, tamper, signer, reason, logged
):
    publisher = ModelStore(stack.store, signing_key=keys[signer][0])
    version = republish(publisher, IRIS)
    marker = tmp_path / "unpickled"
    directory = publisher.layout.version_dir(IRIS, version)
    if tamper == "pickle_and_sha256":
        replace_pickle_and_its_sha256(directory, marker)
    elif tamper == "metadata":
        edit_metadata(directory)
    publisher.promote(IRIS, version, force=True)
    try:
        eventually(lambda: refusals(stack, version, reason) >= 1, message=f"a {reason} refusal")
        for _ in range(10):
            answer = requests.post(
                f"{stack.url}/v1/models/{IRIS}/predict", json={"instances": [IRIS_ROW]}, timeout=10
            )
            assert answer.status_code == 200
            assert answer.json()["version"] == 1

        def readiness_says_why():
            ready = requests.get(f"{stack.url}/readyz", timeout=10).json()["models"][IRIS]
            return ready.get("wanted") == version and "refusing to unpickle" in ready["error"]

        eventually(readiness_says_why, message="/readyz says why the version is refused")
        log = (stack.runtime_dir / "gunicorn.log").read_text()
        assert f"cannot load {IRIS}@{version}" in log and logged in log
        assert not marker.exists()
    finally:
        publisher.rollback(IRIS)
