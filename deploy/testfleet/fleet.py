"""A fleet of test hosts on this machine, for `make deploy` against something real.

Each host is a network namespace on one bridge, with its own mount and UTS namespaces
(hostname, /etc, the service's directories, /run, /tmp, /root) and its own sshd. The
controller (this machine's root namespace) is <subnet>.1 on the bridge; the hosts reach only
each other and the controller: nothing is forwarded or routed to the outside.

    fleet.py up --hosts 3 --dir .fleet     # lb, store, app1..app3; writes .fleet/inventory.yaml
    fleet.py status --dir .fleet
    fleet.py down --dir .fleet             # idempotent, also after a half-failed `up`

Root only. Standard library, and PyYAML for `up` (so `down` runs on any python3).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
UNSHARE = "/usr/bin/unshare"
HOST_PYTHON = "/usr/bin/python3"
REQUIRED_TOOLS = ("ip", "ssh", "ssh-keygen", UNSHARE, SSHD)

DEFAULT_PREFIX = "msf"
DEFAULT_SUBNET = "10.231.0"
CONTROLLER_OCTET = 1
BALANCER_OCTET = 2
STORE_OCTET = 3
FIRST_APP_OCTET = 11
MAX_APP_HOSTS = 200
APP_WORKERS = 2
BALANCER_PORT = 80
STORE_PATH = "/srv/model-service/store"

UP_TIMEOUT_S = 30.0
SSH_ATTEMPT_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.1
TERM_GRACE_S = 5.0
KILL_GRACE_S = 2.0
IFNAME_MAX = 15

# The machine's directories a host sees copy-on-write: what a deploy writes there (users in
# /etc/passwd, /etc/nginx, /var/log/nginx, mount points under /opt and /srv) stays on that
# host, and nothing is created on the machine itself.
OVERLAID_DIRS = ("/etc", "/opt", "/srv", "/var")
# Where each host has a directory of its own, bound from <dir>/hosts/<name>/<source> so the
# controller can look inside. /run/model-service lives in the host's own /run.
SERVICE_BINDS = {
    "/opt/model-service": "opt-model-service",
    "/srv/model-service": "srv-model-service",
    "/var/lib/model-service": "var-lib-model-service",
    "/var/log/model-service": "var-log-model-service",
}
OWN_DIR_BINDS = {"/run": "run", "/tmp": "tmp", "/root": "root"}

STATE_FILE = "state.json"
FLEET_FILES = (
    STATE_FILE,
    "inventory.yaml",
    "keys.yaml",
    "known_hosts",
    "id_ed25519",
    "id_ed25519.pub",
)
HOST_NAME_PATTERN = re.compile(r"^(lb|store|app[0-9]+)$")


class FleetError(Exception):
    """A condition the fleet cannot be built or torn down under, said plainly."""


@dataclass
class Host:
    name: str
    address: str
    namespace: str
    veth: str
    pid: int | None = None
    # The kernel's start time of `pid`, so a recorded pid reused by another process is
    # never signalled (after a reboot, say).
    pid_start: int | None = None


@dataclass
class Fleet:
    directory: Path
    prefix: str
    subnet: str
    hosts: list[Host]

    @property
    def bridge(self) -> str:
        return bridge_name(self.prefix)

    @property
    def controller_address(self) -> str:
        return f"{self.subnet}.{CONTROLLER_OCTET}"

    def host_dir(self, host: Host) -> Path:
        return self.directory / "hosts" / host.name

    def host(self, name: str) -> Host:
        return next(host for host in self.hosts if host.name == name)


def bridge_name(prefix: str) -> str:
    return f"{prefix}br0"


def namespace_name(prefix: str, host_name: str) -> str:
    return f"{prefix}-{host_name}"


def plan_fleet(directory: Path, prefix: str, subnet: str, app_hosts: int) -> Fleet:
    names_and_octets = [("lb", BALANCER_OCTET), ("store", STORE_OCTET)]
    names_and_octets += [(f"app{i}", FIRST_APP_OCTET + i - 1) for i in range(1, app_hosts + 1)]
    hosts = [
        Host(
            name=name,
            address=f"{subnet}.{octet}",
            namespace=namespace_name(prefix, name),
            veth=namespace_name(prefix, name),
        )
        for name, octet in names_and_octets
    ]
    return Fleet(directory=directory, prefix=prefix, subnet=subnet, hosts=hosts)


# --- commands and processes ------------------------------------------------------------------


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise FleetError(f"`{shlex.join(args)}` failed ({result.returncode}): {detail}")
    return result


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks after boot) of a live process; None if it is gone or a
    zombie, which is as good as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces or parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start_time = fields[0], int(fields[19])
    return None if state in ("Z", "X") else start_time


def is_same_process(pid: int | None, start_time: int | None) -> bool:
    return pid is not None and start_time is not None and process_start_time(pid) == start_time


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


# --- state ------------------------------------------------------------------------------------


def save_state(fleet: Fleet) -> None:
    state = {
        "prefix": fleet.prefix,
        "subnet": fleet.subnet,
        "bridge": fleet.bridge,
        "hosts": [asdict(host) for host in fleet.hosts],
    }
    path = fleet.directory / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(temporary, path)


def load_state(directory: Path) -> Fleet | None:
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    hosts = [Host(**host) for host in state["hosts"]]
    return Fleet(directory=directory, prefix=state["prefix"], subnet=state["subnet"], hosts=hosts)


# --- checks before anything is built ------------------------------------------------------------


def check_privileges_and_tools() -> None:
    if os.geteuid() != 0:
        raise FleetError("the test fleet needs root (network namespaces, mounts)")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise FleetError(
            f"missing: {', '.join(missing)} (iproute2, openssh-server, openssh-client)"
        )


def check_arguments(fleet: Fleet, app_hosts: int) -> None:
    if not 1 <= app_hosts <= MAX_APP_HOSTS:
        raise FleetError(f"--hosts: 1 to {MAX_APP_HOSTS} app hosts")
    if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", fleet.prefix):
        raise FleetError("--prefix: 1 to 8 lowercase letters and digits, starting with a letter")
    octets = fleet.subnet.split(".")
    if len(octets) != 3 or not all(o.isdigit() and int(o) < 256 for o in octets):
        raise FleetError(f"--subnet {fleet.subnet!r}: three octets, e.g. {DEFAULT_SUBNET}")
    too_long = [host.veth for host in fleet.hosts if len(host.veth) > IFNAME_MAX]
    if too_long:
        raise FleetError(f"interface names longer than {IFNAME_MAX} characters: {too_long}")
    check_directory_is_mountable(fleet.directory)


def check_directory_is_mountable(directory: Path) -> None:
    # The overlays' upper directories live in the fleet directory: it must not sit inside a
    # directory they cover, and its path must survive mount's comma-separated options.
    for overlaid in OVERLAID_DIRS:
        if directory.is_relative_to(overlaid):
            raise FleetError(f"--dir {directory} must not be under {overlaid} (hosts overlay it)")
    if re.search(r"[,:\s\\]", str(directory)):
        raise FleetError(f"--dir {directory}: no commas, colons, spaces or backslashes")


def check_subnet_is_free(subnet: str) -> None:
    addresses = json.loads(run("ip", "-j", "-4", "addr", "show").stdout)
    for interface in addresses:
        for address in interface.get("addr_info", []):
            if address.get("local", "").startswith(subnet + "."):
                raise FleetError(
                    f"{interface['ifname']} already has {address['local']}: "
                    f"pick another --subnet (or `down` the fleet that uses it)"
                )


# --- keys and files the controller uses ---------------------------------------------------------


def generate_ssh_key(path: Path, comment: str) -> str:
    """A fresh ed25519 key pair at `path`; returns the public key line."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))
    return path.with_name(path.name + ".pub").read_text().strip()


def write_private_file(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


# The fleet's API keys (keys.yaml, mode 0600) and their scopes: what a client of the fleet
# needs, and what an operator needs.
SERVICE_KEY_SCOPES = {"predict": ["predict", "read"], "admin": ["admin"]}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_service_keys(fleet: Fleet) -> dict[str, str]:
    import yaml  # here, not at the top: `down` and `status` run without PyYAML

    keys = {name: "msk_" + secrets.token_urlsafe(32) for name in SERVICE_KEY_SCOPES}
    write_private_file(fleet.directory / "keys.yaml", yaml.safe_dump(keys, sort_keys=False))
    return keys


def write_known_hosts(fleet: Fleet, host_keys: dict[str, str]) -> None:
    lines = []
    for host in fleet.hosts:
        key_type, key_body = host_keys[host.name].split()[:2]
        lines.append(f"{host.address} {key_type} {key_body}\n")
    (fleet.directory / "known_hosts").write_text("".join(lines))


def inventory(fleet: Fleet, keys: dict[str, str]) -> dict:
    directory = fleet.directory
    balancer, store = fleet.host("lb"), fleet.host("store")
    app_hosts = [host for host in fleet.hosts if host.name.startswith("app")]
    known_hosts = directory / "known_hosts"
    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(directory / "id_ed25519"),
                "ansible_ssh_common_args": (
                    f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
                ),
                "ansible_python_interpreter": HOST_PYTHON,
                "service_manager": "supervisor",
                # The first deploy puts them in the fleet's store (by digest).
                "service_keys": [
                    {"name": name, "scopes": scopes, "sha256": sha256_hex(keys[name])}
                    for name, scopes in SERVICE_KEY_SCOPES.items()
                ],
                "balancer_url": f"http://{balancer.address}:{BALANCER_PORT}",
                "store_url": f"ssh://model-service@{store.address}:22{STORE_PATH}",
            },
            "children": {
                "app": {
                    "hosts": {
                        host.name: {"ansible_host": host.address, "workers": APP_WORKERS}
                        for host in app_hosts
                    }
                },
                "balancer": {
                    "hosts": {
                        balancer.name: {
                            "ansible_host": balancer.address,
                            "listen_port": BALANCER_PORT,
                        }
                    }
                },
                "store": {
                    "hosts": {store.name: {"ansible_host": store.address, "store_path": STORE_PATH}}
                },
            },
        }
    }


def write_inventory(fleet: Fleet, keys: dict[str, str]) -> None:
    import yaml  # here, not at the top: `down` and `status` run without PyYAML

    header = (
        "# The test fleet, written by deploy/testfleet/fleet.py up (deploy/inventory.example.yaml\n"
        "# documents every field). The service keys themselves are in keys.yaml next to it.\n"
    )
    body = yaml.safe_dump(inventory(fleet, keys), sort_keys=False, width=1000)
    (fleet.directory / "inventory.yaml").write_text(header + body)


# --- one host's files -------------------------------------------------------------------------


def overlay_dirs(fleet: Fleet, host: Host, target: str) -> tuple[Path, Path]:
    layer = fleet.host_dir(host) / "layers" / target.strip("/")
    return layer / "upper", layer / "work"


def sshd_config(host: Host) -> str:
    # Written into the host's own /etc/ssh (the overlay's upper layer); paths are the host's.
    # UsePAM is off: there is no login session machinery in a namespace.
    return "\n".join(
        [
            f"ListenAddress {host.address}:22",
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            "PidFile /run/sshd.pid",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "UsePAM no",
            "X11Forwarding no",
            "PrintMotd no",
            "AcceptEnv LANG LC_*",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
            "",
        ]
    )


def etc_hosts(fleet: Fleet) -> str:
    # The hosts know each other by name, as they would through DNS; there is no DNS here.
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines.append(f"{fleet.controller_address}\tcontroller")
    lines += [f"{host.address}\t{host.name}" for host in fleet.hosts]
    return "\n".join(lines) + "\n"


def prepare_host_files(fleet: Fleet, host: Host, controller_public_key: str) -> str:
    """The host's directories, its /etc additions and its root's authorized key; returns the
    public half of its new host key."""
    host_dir = fleet.host_dir(host)
    for target in OVERLAID_DIRS:
        for layer_dir in overlay_dirs(fleet, host, target):
            layer_dir.mkdir(parents=True, exist_ok=True)
    for source in SERVICE_BINDS.values():
        (host_dir / source).mkdir(parents=True, exist_ok=True)
    (host_dir / "run").mkdir(mode=0o755, exist_ok=True)
    (host_dir / "tmp").mkdir(exist_ok=True)
    (host_dir / "tmp").chmod(0o1777)
    ssh_dir = host_dir / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (host_dir / "root").chmod(0o700)
    (ssh_dir / "authorized_keys").write_text(controller_public_key + "\n")
    (ssh_dir / "authorized_keys").chmod(0o600)

    etc_upper, _ = overlay_dirs(fleet, host, "/etc")
    (etc_upper / "hostname").write_text(host.name + "\n")
    (etc_upper / "hosts").write_text(etc_hosts(fleet))
    (etc_upper / "ssh").mkdir(mode=0o755, exist_ok=True)
    (etc_upper / "ssh" / "sshd_config").write_text(sshd_config(host))
    return generate_ssh_key(etc_upper / "ssh" / "ssh_host_ed25519_key", f"root@{host.name}")


def host_init_script(fleet: Fleet, host: Host) -> str:
    """The shell script that runs in the host's fresh mount and UTS namespaces: it builds the
    host's view of the file system, names the host, and becomes its sshd."""
    host_dir = fleet.host_dir(host)
    lines = ["set -eu"]
    for target in OVERLAID_DIRS:
        upper, work = overlay_dirs(fleet, host, target)
        options = f"lowerdir={target},upperdir={upper},workdir={work}"
        lines.append(f"mount -t overlay overlay -o {shlex.quote(options)} {target}")
    # The machine's other host keys are not this host's: they go from its view only.
    lines.append(
        "rm -f /etc/ssh/ssh_host_rsa_key* /etc/ssh/ssh_host_ecdsa_key* /etc/ssh/ssh_host_dsa_key*"
    )
    lines.append("mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm")
    for target, source in SERVICE_BINDS.items():
        lines.append(f"mkdir -p {target}")
        lines.append(f"mount --bind {shlex.quote(str(host_dir / source))} {target}")
    # A bind whose target holds the fleet directory (/tmp for the tests, say) hides the other
    # sources, so it comes last.
    own_dirs = sorted(
        OWN_DIR_BINDS.items(), key=lambda item: fleet.directory.is_relative_to(item[0])
    )
    for target, source in own_dirs:
        lines.append(f"mount --bind {shlex.quote(str(host_dir / source))} {target}")
    # sshd's privilege separation directory, and what a booted host has in /run.
    lines.append("mkdir -p -m 0755 /run/sshd /run/model-service")
    lines.append("mkdir -p -m 1777 /run/lock")
    lines.append(f"hostname {host.name}")
    lines.append(f"exec {SSHD} -D -e -f /etc/ssh/sshd_config")
    return "\n".join(lines) + "\n"


# --- network ----------------------------------------------------------------------------------


def create_bridge(fleet: Fleet) -> None:
    run("ip", "link", "add", fleet.bridge, "type", "bridge")
    # The bridge names its fleet's directory, so no other directory's `up` or `down` takes
    # the fleet for a leftover while that directory still holds its state.
    run("ip", "link", "set", fleet.bridge, "alias", str(fleet.directory))
    run("ip", "addr", "add", f"{fleet.controller_address}/24", "dev", fleet.bridge)
    run("ip", "link", "set", fleet.bridge, "up")


def create_host_network(fleet: Fleet, host: Host) -> None:
    run("ip", "netns", "add", host.namespace)
    # The host's end is born inside its namespace: an `eth0` may exist out here already.
    peer = ("peer", "name", "eth0", "netns", host.namespace)
    run("ip", "link", "add", host.veth, "type", "veth", *peer)
    run("ip", "link", "set", host.veth, "master", fleet.bridge, "up")
    in_namespace = ("ip", "-n", host.namespace)
    run(*in_namespace, "link", "set", "lo", "up")
    run(*in_namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
    run(*in_namespace, "link", "set", "eth0", "up")


# --- starting and checking the hosts ------------------------------------------------------------


def start_host(fleet: Fleet, host: Host) -> None:
    host_dir = fleet.host_dir(host)
    script = host_init_script(fleet, host)
    (host_dir / "init.sh").write_text(script)  # what ran, for whoever debugs a host
    command = ["ip", "netns", "exec", host.namespace]
    command += [UNSHARE, "--mount", "--uts", "--propagation", "private", "--"]
    command += ["/bin/sh", "-c", script]
    with open(host_dir / "sshd.log", "ab") as log:
        # Neither `ip netns exec` nor unshare forks, so this pid becomes the host's sshd; a
        # session of its own keeps it out of the caller's process group and terminal.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    host.pid = process.pid
    host.pid_start = process_start_time(process.pid)
    save_state(fleet)


def ssh_command(fleet: Fleet, host: Host, *remote: str) -> list[str]:
    """The login Ansible makes: the controller's key, and only the host keys fleet.py wrote."""
    options = {
        "UserKnownHostsFile": fleet.directory / "known_hosts",
        "StrictHostKeyChecking": "yes",
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "ConnectTimeout": 2,
    }
    command = ["ssh", "-i", str(fleet.directory / "id_ed25519")]
    for option, value in options.items():
        command += ["-o", f"{option}={value}"]
    return [*command, f"root@{host.address}", *remote]


def log_tail(fleet: Fleet, host: Host, lines: int = 5) -> str:
    try:
        text = (fleet.host_dir(host) / "sshd.log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def wait_for_logins(fleet: Fleet, timeout_s: float) -> None:
    """Returns once every host's sshd answers `hostname` with the host's name over SSH with
    strict host key checking; raises with each laggard's sshd log otherwise."""
    deadline = time.monotonic() + timeout_s
    pending = list(fleet.hosts)
    last_answer: dict[str, str] = {}
    while pending:
        for host in pending:
            if not is_same_process(host.pid, host.pid_start):
                raise FleetError(f"{host.name}'s sshd exited:\n{log_tail(fleet, host)}")
        attempts = {
            host.name: subprocess.Popen(
                ssh_command(fleet, host, "hostname"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for host in pending
        }
        for name, attempt in attempts.items():
            try:
                out, err = attempt.communicate(timeout=SSH_ATTEMPT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                attempt.kill()
                out, err = attempt.communicate()
            last_answer[name] = (out + err).strip()
        pending = [host for host in pending if last_answer[host.name] != host.name]
        if pending and time.monotonic() > deadline:
            report = "\n".join(
                f"{host.name} ({host.address}): ssh said {last_answer[host.name]!r}; sshd log:\n"
                f"{log_tail(fleet, host)}"
                for host in pending
            )
            raise FleetError(f"no SSH login within {timeout_s:.0f} s:\n{report}")
        if pending:
            time.sleep(POLL_INTERVAL_S)


# --- up -------------------------------------------------------------------------------------


def up(directory: Path, app_hosts: int, prefix: str, subnet: str) -> Fleet:
    fleet = plan_fleet(directory, prefix, subnet, app_hosts)
    check_arguments(fleet, app_hosts)
    check_privileges_and_tools()
    if load_state(directory) is not None:
        print(f"tearing down the fleet in {directory} first")
        down(directory)
    owner = live_fleet_elsewhere(prefix, directory)
    if owner is not None:
        raise FleetError(
            f"the fleet in {owner} runs under --prefix {prefix}: "
            f"`down --dir {owner}` first, or pick another --prefix and --subnet"
        )
    leftovers = leftover_namespaces(prefix)
    if leftovers or interface_exists(bridge_name(prefix)):
        # Their bridge's name is this fleet's: the two cannot live side by side.
        print(f"removing a fleet whose state file is gone: {' '.join(leftovers)}")
        down(directory, prefix)
    check_subnet_is_free(subnet)

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    save_state(fleet)  # from here on, `down` can undo whatever got built
    try:
        build(fleet)
    except BaseException:
        # Nothing half-built stays behind; the error says what went wrong.
        try:
            down(directory, prefix)
        except FleetError as error:
            print(f"and tearing down what was built failed too: {error}", file=sys.stderr)
        raise
    return fleet


def build(fleet: Fleet) -> None:
    controller_key = generate_ssh_key(fleet.directory / "id_ed25519", "fleet-controller")
    keys = write_service_keys(fleet)
    create_bridge(fleet)
    host_keys = {}
    for host in fleet.hosts:
        host_keys[host.name] = prepare_host_files(fleet, host, controller_key)
        create_host_network(fleet, host)
        start_host(fleet, host)
    write_known_hosts(fleet, host_keys)
    write_inventory(fleet, keys)
    wait_for_logins(fleet, UP_TIMEOUT_S)


def add_seed_store(directory: Path, seed_store: Path) -> None:
    """Name in the inventory the store a first deploy seeds the fleet's store from, and let
    the controller's key reach that store too (as `modelctl --store ssh://...` does)."""
    public_key = (directory / "id_ed25519.pub").read_text().strip()
    add_inventory_vars(
        directory, {"seed_store": str(seed_store), "store_admin_public_key": public_key}
    )


def add_trusted_keys(directory: Path, public_keys: list[Path]) -> None:
    """Have the app hosts trust these signing keys (service.store.signing): only versions
    signed by one of them are served."""
    add_inventory_vars(
        directory, {"trusted_signing_keys": [path.read_text() for path in public_keys]}
    )


def add_inventory_vars(directory: Path, variables: dict) -> None:
    """Set these variables for every host of the fleet's inventory, keeping its comments."""
    import yaml

    path = directory / "inventory.yaml"
    text = path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    data = yaml.safe_load(text)
    data["all"]["vars"].update(variables)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=1000))


# --- down -----------------------------------------------------------------------------------


def leftover_namespaces(prefix: str) -> list[str]:
    """This prefix's namespaces, whether or not a state file still knows them."""
    listing = run("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    ours = []
    for name in names:
        head, _, host_name = name.partition("-")
        if head == prefix and HOST_NAME_PATTERN.match(host_name):
            ours.append(name)
    return ours


def bridge_owner(prefix: str) -> Path | None:
    result = run("ip", "-j", "link", "show", bridge_name(prefix), check=False)
    if result.returncode != 0:
        return None
    alias = json.loads(result.stdout)[0].get("ifalias")
    return Path(alias) if alias else None


def live_fleet_elsewhere(prefix: str, directory: Path) -> Path | None:
    """The directory of another fleet that runs under this prefix and still has its state."""
    owner = bridge_owner(prefix)
    if owner is None or owner == directory:
        return None
    owner_state = load_state(owner)
    return owner if owner_state is not None and owner_state.prefix == prefix else None


def namespace_pids(namespace: str) -> set[int]:
    result = run("ip", "netns", "pids", namespace, check=False)
    return {int(pid) for pid in result.stdout.split()}


def signal_processes(pids: set[int], groups: set[int], signum: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def stop_processes(fleet: Fleet | None, namespaces: list[str]) -> None:
    """SIGTERM, then SIGKILL, to every process in the fleet's namespaces (whatever a deploy
    started there too) and to the process group of each recorded sshd that is still itself."""
    groups = set()
    if fleet is not None:
        groups = {h.pid for h in fleet.hosts if is_same_process(h.pid, h.pid_start)}
    # Every process met so far, by pid and start time: an exiting process leaves its
    # namespaces before it is gone, so a namespace's listing alone would end the wait early.
    seen = {pid: process_start_time(pid) for pid in groups}

    def survivors() -> set[int]:
        for namespace in namespaces:
            for pid in namespace_pids(namespace) - seen.keys():
                seen[pid] = process_start_time(pid)
        return {pid for pid, start in seen.items() if is_same_process(pid, start)}

    for signum, grace_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        remaining = survivors()
        if not remaining:
            return
        signal_processes(remaining, groups & remaining, signum)
        if wait_until(lambda: not survivors(), grace_s):
            return
    raise FleetError(f"processes would not die: {sorted(survivors())}")


def interface_exists(name: str) -> bool:
    return run("ip", "link", "show", name, check=False).returncode == 0


def veth_names() -> set[str]:
    links = json.loads(run("ip", "-j", "link", "show", "type", "veth").stdout or "[]")
    return {link["ifname"] for link in links}


def mounts_under(directory: Path) -> list[str]:
    """Mount points in this (the root) namespace at or below `directory`, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if Path(point).is_relative_to(directory):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_fleet_files(directory: Path) -> None:
    # The hosts' mounts live and die with their namespaces; anything mounted here in the root
    # namespace (by hand, say) goes first, or removing the tree would empty what is mounted.
    for point in mounts_under(directory):
        if run("umount", point, check=False).returncode != 0:
            run("umount", "--lazy", point, check=False)
    still_mounted = mounts_under(directory)
    if still_mounted:
        raise FleetError(f"still mounted, not removing {directory}: {still_mounted}")
    if (directory / "hosts").exists():
        shutil.rmtree(directory / "hosts")
    for name in FLEET_FILES:
        (directory / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()  # only when nothing else was kept there


def down(directory: Path, prefix: str = DEFAULT_PREFIX) -> None:
    if os.geteuid() != 0:
        raise FleetError("tearing the test fleet down needs root")
    fleet = load_state(directory)
    if fleet is not None:
        prefix = fleet.prefix
    owner = live_fleet_elsewhere(prefix, directory)
    if owner is not None:
        # Its namespaces and bridge are that fleet's now; only this directory's files go.
        print(f"leaving the {prefix} fleet of {owner} alone (`down --dir {owner}` ends it)")
        stop_processes(fleet, [])
        remove_fleet_files(directory)
        return
    namespaces = leftover_namespaces(prefix)
    stop_processes(fleet, namespaces)
    for namespace in namespaces:
        run("ip", "netns", "del", namespace, check=False)
    # Each veth goes with its namespace (its peer was born there), which the kernel cleans up
    # a moment later; a quick `up` again needs the names free. A veth is named as its namespace.
    wait_until(lambda: not veth_names() & set(namespaces), TERM_GRACE_S)
    if interface_exists(bridge_name(prefix)):
        run("ip", "link", "del", bridge_name(prefix))
    remove_fleet_files(directory)


# --- status ---------------------------------------------------------------------------------


def status(directory: Path) -> int:
    fleet = load_state(directory)
    if fleet is None:
        print(f"no fleet in {directory}")
        return 1
    all_alive = True
    for host in fleet.hosts:
        alive = is_same_process(host.pid, host.pid_start)
        all_alive &= alive
        state = "running" if alive else "not running"
        print(f"{host.name:<8} {host.address:<15} sshd {host.pid or '-'} {state}")
    return 0 if all_alive else 1


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="build the fleet (tearing down any old one)")
    up_parser.add_argument("--hosts", type=int, default=3, help="app hosts (default 3)")
    up_parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace/interface prefix")
    up_parser.add_argument("--subnet", default=DEFAULT_SUBNET, help="first three octets")
    up_parser.add_argument(
        "--seed-store",
        type=Path,
        help="a store on this machine whose models fill the fleet's store at its first deploy",
    )
    up_parser.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=[],
        help="a PEM public key the app hosts trust for signed versions (repeatable)",
    )
    down_parser = commands.add_parser("down", help="tear the fleet down (idempotent)")
    down_parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help="whose namespaces to delete when the state file is gone",
    )
    status_parser = commands.add_parser("status", help="one line per host")
    for sub in (up_parser, down_parser, status_parser):
        sub.add_argument("--dir", type=Path, default=Path(".fleet"), help="the fleet's directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    directory = args.dir.resolve()
    try:
        if args.command == "up":
            started = time.monotonic()
            fleet = up(directory, args.hosts, args.prefix, args.subnet)
            if args.seed_store is not None:
                add_seed_store(directory, args.seed_store.resolve())
            if args.trusted_key:
                add_trusted_keys(directory, args.trusted_key)
            elapsed = time.monotonic() - started
            print(f"{len(fleet.hosts)} hosts up in {elapsed:.1f} s; inventory:")
            print(f"  {directory / 'inventory.yaml'}")
            return status(directory)
        if args.command == "down":
            down(directory, args.prefix)
            print(f"fleet in {directory} is down")
            return 0
        return status(directory)
    except FleetError as error:
        print(f"fleet {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
