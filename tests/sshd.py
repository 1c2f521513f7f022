"""A real OpenSSH server on a loopback port, for the tests of the store over SSH.

Its one authorised key runs a forced command, as on a fleet's store host; the
client trusts the server's host key through a known_hosts file made here
(strict checking, as in production). Stopped by pid, also when a test fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.localstack import free_port
from tests.support import eventually

SSHD = "/usr/sbin/sshd"


def require_sshd() -> None:
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        if os.environ.get("MODEL_SERVICE_REQUIRE_NGINX") or os.environ.get("CI"):
            pytest.fail("sshd and ssh are required here (apt-get install openssh-server)")
        pytest.skip("OpenSSH is not installed (apt-get install openssh-server)")


@dataclasses.dataclass
class LoopbackSshd:
    port: int
    user: str
    key: Path
    known_hosts: Path
    process: subprocess.Popen

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path.with_suffix(".pub").read_text().strip()


@contextlib.contextmanager
def loopback_sshd(workdir: Path, forced_command: str) -> Iterator[LoopbackSshd]:
    """sshd on 127.0.0.1 whose only key runs ``forced_command`` (and nothing else)."""
    require_sshd()
    workdir.mkdir(parents=True, exist_ok=True)
    host_public = keygen(workdir / "host_ed25519")
    client_public = keygen(workdir / "client_ed25519")
    authorized = workdir / "authorized_keys"
    authorized.write_text(f'restrict,command="{forced_command}" {client_public}\n')
    port = free_port()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public}\n")
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {workdir / 'host_ed25519'}",
                f"AuthorizedKeysFile {authorized}",
                f"PidFile {workdir / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                # The test's files live in a temporary directory sshd did not make.
                "StrictModes no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = open(workdir / "sshd.log", "wb")  # noqa: SIM115 (kept open for the server's life)
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    server = LoopbackSshd(port, getpass.getuser(), workdir / "client_ed25519", known_hosts, process)
    try:
        wait_for_port(port, process, workdir / "sshd.log")
        yield server
    finally:
        server.stop()
        log.close()


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    import socket

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    eventually(listening, timeout, interval=0.05, message=f"sshd listening on port {port}")


def modelctl() -> str:
    return str(Path(sys.executable).with_name("modelctl"))


def store_serve() -> str:
    return str(Path(sys.executable).with_name("model-store-serve"))
