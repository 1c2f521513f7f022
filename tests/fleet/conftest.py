"""One test fleet for every test of this package: three app hosts, a balancer and a store
host seeded with the demo models (iris-classifier in two versions). Building it and, after
a deploy, tearing it down take minutes on two cores, so it is built once, at the first test
that asks for it, and torn down (by the pids and namespaces fleet.py recorded) after the
package's last test, also when a test fails.

The fleet's own checks (test_testfleet.py) look at it as built; the deploy's tests
(test_fleet_deploy.py) change it, in file order, as an operator's day would, so they run
after every other test of the package."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from service.store import ModelStore
from tests.fleet.support import SHARED_FLEET, RunningFleet, fleet_up
from tests.support import IRIS

HERE = Path(__file__).resolve().parent
# The modules that change the fleet, in the order they run after the package's others.
MODULES_LAST = ("test_fleet_deploy.py",)


def pytest_collection_modifyitems(session, config, items) -> None:
    """This package's modules named in MODULES_LAST move behind its others; nothing else
    moves (the items of this package keep the places pytest gave them)."""
    slots = [index for index, item in enumerate(items) if item.path.resolve().parent == HERE]
    ours = sorted((items[index] for index in slots), key=run_rank)  # stable
    for index, item in zip(slots, ours, strict=True):
        items[index] = item


def run_rank(item: pytest.Item) -> int:
    name = item.path.name
    return MODULES_LAST.index(name) + 1 if name in MODULES_LAST else 0


@pytest.fixture(scope="package")
def fleet(tmp_path_factory, trained_store_dir) -> Iterator[RunningFleet]:
    directory = tmp_path_factory.mktemp("fleet") / "fleet"
    seed = directory.parent / "seed_store"
    shutil.copytree(trained_store_dir, seed)
    republish(ModelStore(seed), IRIS)  # a second version to promote to
    with fleet_up(
        directory,
        SHARED_FLEET.prefix,
        SHARED_FLEET.subnet,
        len(SHARED_FLEET.app_hosts),
        seed_store=seed,
    ) as running:
        inventory = yaml.safe_load((directory / "inventory.yaml").read_text())
        assert inventory["all"]["vars"]["seed_store"] == str(seed)
        yield running


def republish(store: ModelStore, name: str) -> int:
    source = store.load_artifact(name, 1)
    data = (store.layout.version_dir(name, 1) / "model.pkl").read_bytes()
    return store.publish(name, data, dict(source.metadata))
