"""Start and stop the local stack: Gunicorn workers behind an unprivileged Nginx, and
the Open Inference Protocol's gRPC server next to them when asked for.

Used by ``modelctl serve`` / ``modelctl stop`` (and so ``make run`` / ``make stop``),
by the integration tests and by the benchmarks. Everything it starts is
recorded in pid files in the runtime directory, and only those pids are ever
signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from service.config import Settings
from service.edge import https_url, render_nginx_config
from service.errors import ServiceError

# deploy/ ships inside the package (setup.cfg), so an installed wheel finds its files.
DEPLOY_DIR = Path(str(resources.files("service.deploy")))
NGINX_TEMPLATE = DEPLOY_DIR / "nginx.conf"
GUNICORN_CONFIG = DEPLOY_DIR / "gunicorn.conf.py"
NGINX_INSTALL_HINT = "sudo apt-get install -y nginx"


class StackError(ServiceError):
    code = "stack_error"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class LocalStack:
    """One Gunicorn master with its workers, (when installed) Nginx in front, and
    (with ``grpc_port``) the gRPC server."""

    runtime_dir: Path
    store: Path
    port: int = 8080
    workers: int | None = None
    host: str = "127.0.0.1"
    use_nginx: bool | None = None  # None: use it when installed
    gunicorn_port: int | None = None
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)
    app: str = "service.wsgi:app"
    grpc_port: int | None = None  # None: no gRPC server

    def __post_init__(self) -> None:
        self.runtime_dir = Path(self.runtime_dir).resolve()
        self.store = Path(self.store).resolve()
        if self.use_nginx is None:
            self.use_nginx = nginx_binary() is not None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        """https://host:tls_port when the settings turn HTTPS on (Nginx then redirects
        ``url`` there); else None."""
        return https_url(self.edge_settings(), self.host) if self.use_nginx else None

    def edge_settings(self) -> Settings:
        """The settings Nginx's configuration is rendered from: the environment the stack's
        processes get (extra_env included)."""
        return Settings.load(overrides={"store": self.store}, environ=self._env())

    @property
    def grpc_address(self) -> str | None:
        return None if self.grpc_port is None else f"{self.host}:{self.grpc_port}"

    @property
    def gunicorn_url(self) -> str:
        return f"http://127.0.0.1:{self._gunicorn_port()}"

    def pidfile(self, what: str) -> Path:
        return self.runtime_dir / f"{what}.pid"

    @property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR of the Gunicorn workers and the gRPC server: emptied
        before each start (prometheus_client's multiprocess mode needs a fresh one)."""
        return self.runtime_dir / "prometheus"

    # -- start -------------------------------------------------------------------

    def start(self, *, ready_timeout: float = 60.0) -> None:
        if self.running_pids():
            raise StackError(f"a stack is already running from {self.runtime_dir}; stop it first")
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir()
        try:
            self._start_gunicorn()
            if self.use_nginx:
                self._start_nginx()
            if self.grpc_port is not None:
                self._start_grpc()
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _gunicorn_port(self) -> int:
        if not self.use_nginx:
            return self.port
        if self.gunicorn_port is None:
            self.gunicorn_port = free_port()
        return self.gunicorn_port

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        env.update(self.extra_env)
        env["MODEL_SERVICE_STORE"] = str(self.store)
        # The workers' and the gRPC server's shared monitoring state (feedback, drift).
        env.setdefault("MODEL_SERVICE_STATE_DIR", str(self.runtime_dir / "state"))
        return env

    def _start_gunicorn(self) -> None:
        env = self._env()
        env["MODEL_SERVICE_BIND"] = f"127.0.0.1:{self._gunicorn_port()}"
        env["MODEL_SERVICE_PIDFILE"] = str(self.runtime_dir / "gunicorn-master.pid")
        if self.workers:
            env["MODEL_SERVICE_WORKERS"] = str(self.workers)
        with open(self.runtime_dir / "gunicorn.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONFIG), self.app],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile("gunicorn").write_text(f"{process.pid}\n")

    def _start_nginx(self) -> None:
        binary = nginx_binary()
        if binary is None:
            raise StackError(f"nginx is not installed (install it with: {NGINX_INSTALL_HINT})")
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.runtime_dir / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
        settings = self.edge_settings()
        config = render_nginx_config(
            NGINX_TEMPLATE.read_text(),
            listen=f"{self.host}:{self.port}",
            upstreams=[f"127.0.0.1:{self._gunicorn_port()}"],
            runtime_dir=self.runtime_dir,
            settings=settings,
        )
        config_path = self.runtime_dir / "nginx.conf"
        config_path.write_text(config)
        error_log = str(self.runtime_dir / "nginx-error.log")
        nginx = [binary, "-p", str(self.runtime_dir), "-c", str(config_path), "-e", error_log]
        check = subprocess.run([*nginx, "-t", "-q"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise StackError(f"nginx rejected {config_path}: {check.stderr.strip()}")
        with open(self.runtime_dir / "nginx.log", "ab") as log:
            process = subprocess.Popen(
                [*nginx, "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile("nginx").write_text(f"{process.pid}\n")

    def _start_grpc(self) -> None:
        with open(self.runtime_dir / "grpc.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "service.grpc_server", "--bind", str(self.grpc_address)],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile("grpc").write_text(f"{process.pid}\n")

    def wait_ready(self, timeout: float) -> None:
        """Wait for every worker to be forked, Gunicorn's /readyz, then the same via Nginx,
        then the gRPC server's ServerReady."""
        deadline = time.monotonic() + timeout
        self._wait_url(self.gunicorn_url + "/readyz", deadline, timeout)
        # One worker answering is not all of them: callers count on the whole pool.
        expected = self.workers or os.cpu_count() or 1
        while len(self.worker_pids()) < expected:
            if time.monotonic() > deadline:
                raise StackError(f"only {len(self.worker_pids())} of {expected} workers started")
            time.sleep(0.05)
        if self.use_nginx:
            self._wait_url((self.tls_url or self.url) + "/readyz", deadline, timeout)
        if self.grpc_port is not None:
            self._wait_grpc(deadline, timeout)

    def _wait_url(self, url: str, deadline: float, timeout: float) -> None:
        last_error = "no answer"
        while time.monotonic() < deadline:
            self._check_started()
            try:
                # Our own Nginx on loopback: whether it answers, not who it is (the
                # certificate may be self-signed).
                context = _unverified_tls() if url.startswith("https:") else None
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise StackError(
            f"{self.url}/readyz did not answer 200 within {timeout:.0f}s ({last_error})"
        )

    def _wait_grpc(self, deadline: float, timeout: float) -> None:
        import grpc  # only stacks with a gRPC server need it

        from service.protocols.grpc import open_inference_pb2, open_inference_pb2_grpc

        # Asked on loopback (or the one address it listens on), never through a proxy.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        target = f"{host}:{self.grpc_port}"
        last_error = "no answer"
        while time.monotonic() < deadline:
            self._check_started()
            # A fresh channel each time: a refused connect must not leave us in its backoff.
            with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
                stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
                try:
                    answer = stub.ServerReady(open_inference_pb2.ServerReadyRequest(), timeout=2)
                except grpc.RpcError as exc:
                    last_error = f"{exc.code().name}: {exc.details()}"
                else:
                    if answer.ready:
                        return
                    last_error = "ServerReady answered false"
            time.sleep(0.1)
        raise StackError(
            f"the gRPC server on {target} was not ready within {timeout:.0f}s ({last_error})"
        )

    def _check_started(self) -> None:
        """Fail fast when a process this stack started has exited."""
        for what in ("gunicorn", "nginx", "grpc"):
            pid = self._pid(what)
            if pid is not None and not _alive(pid):
                raise StackError(
                    f"{what} exited during start-up; see {self.runtime_dir / (what + '.log')}"
                    + self._log_tail(what)
                )

    def _log_tail(self, what: str, lines: int = 15) -> str:
        path = self.runtime_dir / f"{what}.log"
        if not path.exists():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(tail)

    # -- inspect and stop --------------------------------------------------------

    def _pid(self, what: str) -> int | None:
        try:
            return int(self.pidfile(what).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def running_pids(self) -> dict[str, int]:
        pids = {}
        for what in ("gunicorn", "nginx", "grpc"):
            pid = self._pid(what)
            if pid is not None and _alive(pid) and _is_ours(pid, what):
                pids[what] = pid
        return pids

    def worker_pids(self) -> list[int]:
        master = self._pid("gunicorn")
        if master is None:
            return []
        return _children(master)

    def stop(self, timeout: float = 35.0) -> list[str]:
        """Stop exactly what this stack started (by pid file); return what was stopped."""
        stopped = []
        # Nginx first, so no new request reaches Gunicorn while it drains.
        for what, sig in (
            ("nginx", signal.SIGQUIT),
            ("grpc", signal.SIGTERM),
            ("gunicorn", signal.SIGTERM),
        ):
            pid = self._pid(what)
            if pid is not None and _alive(pid) and _is_ours(pid, what):
                # A Gunicorn worker forked a moment before the master's SIGTERM can miss
                # it (its own handlers are not installed yet): say it again to stragglers.
                _terminate(pid, sig, timeout, repeat_to_children=what == "gunicorn")
                stopped.append(f"{what} (pid {pid})")
            self.pidfile(what).unlink(missing_ok=True)
        return stopped


def _unverified_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def nginx_binary() -> str | None:
    """The nginx to run: MODEL_SERVICE_NGINX_BIN when set ("" means none), else from PATH."""
    configured = os.environ.get("MODEL_SERVICE_NGINX_BIN")
    if configured is not None:
        return configured if configured and os.access(configured, os.X_OK) else None
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as handle:
        if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _is_ours(pid: int, what: str) -> bool:
    """Guard against a recycled pid: the process must still be the program we started."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return what in cmdline or (what == "gunicorn" and "model-service" in cmdline)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _terminate(
    pid: int, sig: signal.Signals, timeout: float, *, repeat_to_children: bool = False
) -> None:
    children = _children(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    next_repeat = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        if repeat_to_children and time.monotonic() >= next_repeat:
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, sig)
            next_repeat = time.monotonic() + 2.0
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while _alive(pid) and time.monotonic() < deadline + 5:
        time.sleep(0.05)
