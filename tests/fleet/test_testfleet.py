"""The test fleet (deploy/testfleet/fleet.py): real namespaces, mounts and sshd on this machine.

The package's fleet (conftest.py), looked at from outside and inside before any deploy
changes it; and fleets of their own, on prefixes and subnets of their own (mst1.., 10.232.1..),
for building and tearing down. Each is torn down even when a test fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import pwd
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.fleet.support import (
    SHARED_FLEET,
    fleet_cli,
    fleet_up,
    require_fleet_support,
    up_args,
)

pytestmark = pytest.mark.integration

# How a host's sshd shows itself in /proc/<pid>/cmdline once it has set its title.
FLEET_SSHD = b"sshd: /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config"


def is_running(pid: int) -> bool:
    """A zombie, waiting for a parent that never reaps it, has stopped running too."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def namespaces_with_prefix(prefix: str) -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(prefix + "-")]


def interface_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def namespace_pids(prefix: str, host: str) -> list[int]:
    listing = subprocess.run(
        ["ip", "netns", "pids", f"{prefix}-{host}"], capture_output=True, text=True
    ).stdout
    return [int(pid) for pid in listing.split()]


def cmdline(pid: int) -> bytes:
    """A process that ended between listing and reading has no command line."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def running_sshds() -> set[int]:
    """Every sshd a fleet started on this machine, of any fleet."""
    found = set()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(FLEET_SSHD):
                found.add(int(proc.name))
    return {pid for pid in found if is_running(pid)}


def assert_fleet_gone(directory: Path, prefix: str, pids: list[int]) -> None:
    assert namespaces_with_prefix(prefix) == []
    assert not interface_exists(f"{prefix}br0")
    assert [pid for pid in pids if is_running(pid)] == []
    assert not (directory / "state.json").exists()
    assert not (directory / "hosts").exists()
    assert not (directory / "keys.yaml").exists()


# --- one fleet, looked at from outside and inside --------------------------------------------


@pytest.mark.parametrize("host", SHARED_FLEET.hosts)
def test_every_host_takes_a_strictly_checked_login_and_has_its_name(fleet, host):
    assert fleet.ssh(host, "hostname").stdout.strip() == host
    assert fleet.ssh(host, "cat /etc/hostname").stdout.strip() == host


def test_status_lists_every_host_running(fleet):
    lines = fleet_cli("status", "--dir", str(fleet.directory)).stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(SHARED_FLEET.hosts)
    assert all(line.endswith(" running") for line in lines)


def test_opt_model_service_belongs_to_one_host(fleet):
    fleet.ssh("app1", "echo app1 > /opt/model-service/marker")

    assert fleet.ssh("app1", "cat /opt/model-service/marker").stdout == "app1\n"
    assert fleet.ssh("app2", "test -e /opt/model-service/marker", check=False).returncode == 1
    assert not Path("/opt/model-service/marker").exists()
    # The controller sees a host's directory where fleet.py keeps it.
    marker = fleet.directory / "hosts" / "app1" / "opt-model-service" / "marker"
    assert marker.read_text() == "app1\n"


def test_tmp_and_root_belong_to_one_host(fleet):
    fleet.ssh("app1", "touch /tmp/app1-marker /root/app1-marker")

    assert fleet.ssh("app2", "ls /tmp /root").stdout.count("app1-marker") == 0
    assert not Path("/tmp/app1-marker").exists()


def test_a_user_added_on_one_host_exists_only_there(fleet):
    user = "fleet-probe"
    fleet.ssh("app1", f"useradd --system --no-create-home {user}")

    assert fleet.ssh("app1", f"getent passwd {user}").returncode == 0
    assert fleet.ssh("app2", f"getent passwd {user}", check=False).returncode == 2
    with pytest.raises(KeyError):
        pwd.getpwnam(user)


def test_hosts_reach_each_other_by_name_and_address_over_the_bridge(fleet):
    for target in ("store", fleet.address("store")):
        connect = f"import socket; socket.create_connection(({target!r}, 22), timeout=5)"
        fleet.ssh("app1", f'/usr/bin/python3 -c "{connect}"')


def test_hosts_have_no_route_off_the_bridge(fleet):
    routes = fleet.ssh("app1", "ip -4 route").stdout.splitlines()
    assert routes == [
        f"{fleet.subnet}.0/24 dev eth0 proto kernel scope link src {fleet.address('app1')} "
    ]


def test_inventory_names_the_groups_and_the_fleets_files(fleet):
    inventory = yaml.safe_load((fleet.directory / "inventory.yaml").read_text())["all"]
    children = inventory["children"]

    app_hosts = {name: host["ansible_host"] for name, host in children["app"]["hosts"].items()}
    assert app_hosts == {"app1": "10.232.0.11", "app2": "10.232.0.12", "app3": "10.232.0.13"}
    assert children["balancer"]["hosts"]["lb"]["ansible_host"] == "10.232.0.2"
    assert children["store"]["hosts"]["store"]["ansible_host"] == "10.232.0.3"

    variables = inventory["vars"]
    assert variables["ansible_user"] == "root"
    assert variables["ansible_python_interpreter"] == "/usr/bin/python3"
    assert variables["ansible_ssh_private_key_file"] == str(fleet.directory / "id_ed25519")
    known_hosts = fleet.directory / "known_hosts"
    assert f"UserKnownHostsFile={known_hosts}" in variables["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in variables["ansible_ssh_common_args"]
    assert variables["store_url"] == "ssh://model-service@10.232.0.3:22/srv/model-service/store"
    assert variables["balancer_url"] == "http://10.232.0.2:80"


def test_keys_are_private_and_the_inventory_holds_only_their_digests(fleet):
    keys_file = fleet.directory / "keys.yaml"
    assert keys_file.stat().st_mode & 0o777 == 0o600
    keys = yaml.safe_load(keys_file.read_text())
    variables = yaml.safe_load((fleet.directory / "inventory.yaml").read_text())["all"]["vars"]

    service_keys = {entry["name"]: entry for entry in variables["service_keys"]}
    assert service_keys["predict"]["scopes"] == ["predict", "read"]
    assert service_keys["admin"]["scopes"] == ["admin"]
    for name in ("admin", "predict"):
        assert len(keys[name]) >= 43
        digest = hashlib.sha256(keys[name].encode()).hexdigest()
        assert service_keys[name]["sha256"] == digest
        assert keys[name] not in (fleet.directory / "inventory.yaml").read_text()


def test_known_hosts_lists_each_address_with_its_own_key(fleet):
    entries = [line.split() for line in (fleet.directory / "known_hosts").read_text().splitlines()]
    addresses = [entry[0] for entry in entries]
    assert addresses == ["10.232.0.2", "10.232.0.3", "10.232.0.11", "10.232.0.12", "10.232.0.13"]
    assert len({entry[2] for entry in entries}) == len(entries)


# --- fleets of their own, for tearing down ------------------------------------------------------


def test_up_replaces_a_running_fleet_and_down_removes_everything_twice(tmp_path):
    directory, prefix = tmp_path / "fleet", "mst1"
    with fleet_up(directory, prefix, "10.232.1", 1) as first:
        first_pids = [host["pid"] for host in first.state()["hosts"]]
        fleet_cli(*up_args(directory, prefix, "10.232.1", 1))
        second_pids = [host["pid"] for host in first.state()["hosts"]]
        assert [pid for pid in first_pids if is_running(pid)] == []
        assert first.ssh("app1", "hostname").stdout.strip() == "app1"

        fleet_cli("down", "--dir", str(directory))
        assert_fleet_gone(directory, prefix, second_pids)
        fleet_cli("down", "--dir", str(directory))
        assert_fleet_gone(directory, prefix, second_pids)


def test_down_clears_a_fleet_whose_state_file_is_gone(tmp_path):
    directory, prefix = tmp_path / "fleet", "mst2"
    with fleet_up(directory, prefix, "10.232.2", 1) as running:
        state = running.state()
        pids = [host["pid"] for host in state["hosts"]]
        # What a deploy starts through sshd (a new session, out of sshd's process group).
        running.ssh("app1", "setsid sleep 600 > /dev/null 2>&1 < /dev/null &")
        # ssh may return before setsid has become sleep: wait for it to show.
        deadline = time.monotonic() + 15
        while not any(cmdline(pid).startswith(b"sleep") for pid in namespace_pids(prefix, "app1")):
            assert time.monotonic() < deadline, "the sleep started through sshd never showed"
            time.sleep(0.05)
        deployed = namespace_pids(prefix, "app1")
        (directory / "state.json").unlink()

        fleet_cli("down", "--prefix", prefix, "--dir", str(directory))
        assert_fleet_gone(directory, prefix, pids + deployed)


def test_an_up_that_fails_half_way_leaves_nothing_behind(tmp_path):
    require_fleet_support()
    directory, prefix = tmp_path / "fleet", "mst3"
    # An interface already named as app1's veth: the bridge, lb and store get built first.
    subprocess.run(["ip", "link", "add", f"{prefix}-app1", "type", "bridge"], check=True)
    sshds_before = running_sshds()
    try:
        result = fleet_cli(*up_args(directory, prefix, "10.232.3", 1), check=False)
        assert result.returncode == 1
        assert f"{prefix}-app1" in result.stderr
        assert namespaces_with_prefix(prefix) == []
        assert not interface_exists(f"{prefix}br0")
        assert running_sshds() - sshds_before == set()
        assert not directory.exists()
        assert interface_exists(f"{prefix}-app1")  # not the fleet's, so not removed
    finally:
        fleet_cli("down", "--prefix", prefix, "--dir", str(directory), check=False)
        subprocess.run(["ip", "link", "del", f"{prefix}-app1"], check=False)


def test_another_directory_leaves_a_running_fleet_alone(fleet, tmp_path):
    elsewhere = str(tmp_path / "elsewhere")
    pids = [host["pid"] for host in fleet.state()["hosts"]]

    refused = fleet_cli(*up_args(elsewhere, fleet.prefix, "10.232.4", 1), check=False)
    assert refused.returncode == 1
    assert f"down --dir {fleet.directory}" in refused.stderr
    fleet_cli("down", "--prefix", fleet.prefix, "--dir", elsewhere)

    assert all(is_running(pid) for pid in pids)
    assert fleet.ssh("app1", "hostname").stdout.strip() == "app1"
