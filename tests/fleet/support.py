"""The test fleet (deploy/testfleet/fleet.py) as the tests use it: build one for a block,
log in to its hosts, tear it down however the block ends. The package's shared fleet is
built by conftest.py as SHARED_FLEET describes it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FLEET_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "testfleet" / "fleet.py"
COMMAND_TIMEOUT_S = 60


def fleet_required() -> bool:
    return bool(os.environ.get("MODEL_SERVICE_REQUIRE_NGINX"))


def require_fleet_support() -> None:
    """Skip where a fleet cannot be built (not root, no iproute2 or OpenSSH); CI fails instead."""
    missing = [tool for tool in ("ip", "ssh", "ssh-keygen", "unshare") if not shutil.which(tool)]
    if not os.path.exists("/usr/sbin/sshd"):
        missing.append("/usr/sbin/sshd")
    reason = None
    if os.geteuid() != 0:
        reason = "the test fleet needs root (network namespaces, mounts)"
    elif missing:
        reason = f"the test fleet needs {', '.join(missing)} (iproute2, openssh-server/client)"
    if reason and fleet_required():
        pytest.fail(f"{reason}, and CI requires the fleet tests to run")
    if reason:
        pytest.skip(reason)


# A deployed fleet's services get their graceful stop: down can take a while on busy cores.
DOWN_TIMEOUT_S = 240


def fleet_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(FLEET_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=DOWN_TIMEOUT_S if args[0] == "down" else COMMAND_TIMEOUT_S,
    )
    if check:
        assert result.returncode == 0, f"fleet.py {args[0]}: {result.stdout}{result.stderr}"
    return result


@dataclass(frozen=True)
class FleetPlan:
    prefix: str
    subnet: str
    app_hosts: tuple[str, ...]

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every host, in the order fleet.py lists them."""
        return ("lb", "store", *self.app_hosts)


# The package's one fleet (conftest.py). Every fleet the tests build has a prefix and subnet
# of its own (mst*, 10.232.*), so a developer's `.fleet` (msf, 10.231.0) is never touched.
SHARED_FLEET = FleetPlan(prefix="mst", subnet="10.232.0", app_hosts=("app1", "app2", "app3"))


@dataclass
class RunningFleet:
    directory: Path
    prefix: str
    subnet: str

    def address(self, host: str) -> str:
        return next(h["address"] for h in self.state()["hosts"] if h["name"] == host)

    def state(self) -> dict:
        return json.loads((self.directory / "state.json").read_text())

    def ssh(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [
                "ssh",
                "-i",
                str(self.directory / "id_ed25519"),
                "-o",
                f"UserKnownHostsFile={self.directory / 'known_hosts'}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                f"root@{self.address(host)}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        if check:
            assert result.returncode == 0, f"{host}: {command}: {result.stderr}"
        return result


def up_args(
    directory: Path | str, prefix: str, subnet: str, app_hosts: int, seed_store: Path | None = None
) -> tuple[str, ...]:
    hosts = str(app_hosts)
    seed = ("--seed-store", str(seed_store)) if seed_store else ()
    return (
        "up", "--hosts", hosts, "--prefix", prefix, "--subnet", subnet, "--dir", str(directory),
        *seed,
    )  # fmt: skip


@contextlib.contextmanager
def fleet_up(
    directory: Path, prefix: str, subnet: str, app_hosts: int, seed_store: Path | None = None
) -> Iterator[RunningFleet]:
    """A fleet for the duration of the block, torn down however the block ends."""
    require_fleet_support()
    try:
        fleet_cli(*up_args(directory, prefix, subnet, app_hosts, seed_store))
        yield RunningFleet(directory, prefix, subnet)
    finally:
        # A failed teardown fails the test too; Python keeps the test's own error as its context.
        fleet_cli("down", "--prefix", prefix, "--dir", str(directory))
