"""Shared fixtures: a store with the demo models trained into a temporary directory
(once per session, copied per test), and the Flask app → client chain over it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from service import create_app
from service.store import ModelStore
from service.training.demo import train_demo_models


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`make test`: -n 2 --dist loadscope) each test module runs whole on
    one worker, so a module-scoped stack starts once; and tests/fleet runs whole on one
    worker, so the package's one fleet is built once (its hosts' names and addresses are
    fixed). Units go out in collection order, so tests/fleet, the longest, starts first
    (xdist would otherwise send the units with most tests first)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def __init__(self, config, log=None) -> None:
            config.option.loadscopereorder = False
            super().__init__(config, log)

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "tests/fleet" if module.startswith("tests/fleet/") else module

    return ModuleScheduling(config, log)


@pytest.fixture(scope="session")
def trained_store_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained-store") / "model_store"
    train_demo_models(ModelStore(root), progress=False)
    return root


@pytest.fixture
def store_dir(trained_store_dir, tmp_path) -> Path:
    """A private copy of the trained demo store that a test may change."""
    target = tmp_path / "model_store"
    shutil.copytree(trained_store_dir, target)
    return target


@pytest.fixture
def store(store_dir) -> ModelStore:
    return ModelStore(store_dir)


@pytest.fixture
def app(store_dir, tmp_path):
    app = create_app(
        {"store": store_dir, "reload_interval": 0.1, "state_dir": tmp_path / "monitoring"}
    )
    yield app
    app.extensions["model_service.monitoring"].stop()
    app.extensions["model_service"].registry.stop()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files), for the edge's TLS."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
