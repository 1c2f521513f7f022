"""Start and stop the local stack: Gunicorn workers behind an unprivileged Nginx, and
the Open Inference Protocol's gRPC server next to them when asked for, Gunicorn and the
gRPC server under supervisord, which starts again whichever of them dies.

Used by ``modelctl serve`` / ``modelctl stop`` (and so ``make run`` / ``make stop``),
by the integration tests and by the benchmarks. Everything it starts is
recorded in pid files in the runtime directory, and only those pids are ever
signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
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
from service.runtime import shadow_server

# deploy/ ships inside the package (setup.cfg), so an installed wheel finds its files.
DEPLOY_DIR = Path(str(resources.files("service.deploy")))
NGINX_TEMPLATE = DEPLOY_DIR / "nginx.conf"
GUNICORN_CONFIG = DEPLOY_DIR / "gunicorn.conf.py"
NGINX_INSTALL_HINT = "sudo apt-get install -y nginx"


class StackError(ServiceError):
    code = "stack_error"


# The longest path a unix socket address holds on Linux (sun_path, less its final NUL).
UNIX_PATH_MAX = 107


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class LocalStack:
    """Gunicorn (two instances, each with half the workers, when Nginx is in front of two
    or more workers) under supervisord, (when installed) Nginx in front, and (with
    ``grpc_port``) the gRPC server, also under supervisord.

    supervisord starts again a Gunicorn master or a gRPC server that dies; Nginx passes a
    prediction whose worker died to the other instance (proxy_next_upstream). Every
    process writes its pid file, and only those pids are ever signalled."""

    runtime_dir: Path
    store: Path
    port: int = 8080
    workers: int | None = None
    host: str = "127.0.0.1"
    use_nginx: bool | None = None  # None: use it when installed
    gunicorn_port: int | None = None  # the first instance's port (behind Nginx)
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)
    app: str = "service.wsgi:app"
    grpc_port: int | None = None  # None: no gRPC server
    instances: int | None = None  # Gunicorn instances; None: two behind Nginx with 2+ workers
    # Nginx reaches Gunicorn through unix sockets; False: over TCP (the benchmarks' baselines,
    # set up as a naive deployment would be).
    unix_sockets: bool = True

    def __post_init__(self) -> None:
        self.runtime_dir = Path(self.runtime_dir).resolve()
        self.store = Path(self.store).resolve()
        if self.use_nginx is None:
            self.use_nginx = nginx_binary() is not None
        if self.instances is None:
            # One worker stays one instance: a second would double the memory asked for.
            self.instances = 2 if self.use_nginx and self.total_workers >= 2 else 1
        if self.instances not in (1, 2) or self.instances > self.total_workers:
            raise StackError(
                f"{self.instances} Gunicorn instances for {self.total_workers} workers"
            )
        if self.instances > 1 and not self.use_nginx:
            raise StackError("two Gunicorn instances need Nginx in front of them")
        self._ports: dict[str, int] = {}
        # Supervised exits logged before the current wait for readiness (they do not fail it).
        self._exits_before = 0

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
    def total_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def gunicorn_names(self) -> list[str]:
        """The supervised Gunicorn programs: "gunicorn", or "gunicorn-a" and "gunicorn-b"."""
        return ["gunicorn"] if self.instances == 1 else ["gunicorn-a", "gunicorn-b"]

    @property
    def program_names(self) -> list[str]:
        """What supervisord runs, in the order they are stopped."""
        return (["grpc"] if self.grpc_port is not None else []) + self.gunicorn_names

    def instance_workers(self) -> dict[str, int]:
        """Workers of each instance: half each; an odd count gives the first one more (Nginx
        weighs each instance by its workers)."""
        first = -(-self.total_workers // self.instances)
        counts = [first, self.total_workers - first]
        return dict(zip(self.gunicorn_names, counts, strict=False))

    @property
    def gunicorn_url(self) -> str:
        """The first Gunicorn instance, without Nginx."""
        return self.gunicorn_urls[0]

    @property
    def gunicorn_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self._gunicorn_port(name)}" for name in self.gunicorn_names]

    def gunicorn_socket(self, name: str) -> Path | None:
        """The unix socket Nginx reaches an instance through, beside its loopback port
        (which the readiness checks and direct callers use): a connection per request
        costs less on it than over TCP. None without Nginx, or when the runtime directory's
        path is too long for a socket address (Nginx then uses the port)."""
        path = self.runtime_dir / f"{name}.sock"
        if not (self.use_nginx and self.unix_sockets) or len(str(path).encode()) > UNIX_PATH_MAX:
            return None
        return path

    def _gunicorn_binds(self, name: str) -> list[str]:
        tcp = f"127.0.0.1:{self._gunicorn_port(name)}"
        unix = self.gunicorn_socket(name)
        return [tcp] if unix is None else [tcp, f"unix:{unix}"]

    def pidfile(self, what: str) -> Path:
        return self.runtime_dir / f"{what}.pid"

    @property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR of the Gunicorn workers and the gRPC server: emptied
        before each start (prometheus_client's multiprocess mode needs a fresh one)."""
        return self.runtime_dir / "prometheus"

    @property
    def supervisor_log(self) -> Path:
        return self.runtime_dir / "supervisord.log"

    # -- start -------------------------------------------------------------------

    def start(self, *, ready_timeout: float = 60.0) -> None:
        if self.running_pids():
            raise StackError(f"a stack is already running from {self.runtime_dir}; stop it first")
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir()
        for stale in (self.supervisor_log, *self.runtime_dir.glob("*.pid")):
            stale.unlink(missing_ok=True)
        try:
            self._start_supervisord()
            if self.use_nginx:
                self._start_nginx()
            self._wait_ready(ready_timeout, exits_before=0)
        except BaseException:
            self.stop()
            raise

    def _gunicorn_port(self, name: str) -> int:
        if not self.use_nginx:
            return self.port
        if name not in self._ports:
            if name == self.gunicorn_names[0] and self.gunicorn_port is not None:
                self._ports[name] = self.gunicorn_port
            else:
                self._ports[name] = free_port()
            if name == self.gunicorn_names[0]:
                self.gunicorn_port = self._ports[name]
        return self._ports[name]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        env.update(self.extra_env)
        env["MODEL_SERVICE_STORE"] = str(self.store)
        # The workers' and the gRPC server's shared monitoring state (feedback, drift).
        env.setdefault("MODEL_SERVICE_STATE_DIR", str(self.runtime_dir / "state"))
        return env

    def _program_commands(self) -> dict[str, str]:
        """Each program as a shell line: it writes its pid file (again at each restart),
        then becomes the program, its output appended to the program's log."""
        commands = {}
        for name, count in self.instance_workers().items():
            env = {
                "MODEL_SERVICE_BIND": ",".join(self._gunicorn_binds(name)),
                "MODEL_SERVICE_WORKERS": str(count),
                # Native thread pools are sized by the host's workers, not the instance's.
                "MODEL_SERVICE_HOST_WORKERS": str(self.total_workers),
            }
            argv = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONFIG), self.app]
            commands[name] = self._shell_line(name, argv, env, log="gunicorn")
        if self.grpc_port is not None:
            argv = [sys.executable, "-m", "service.grpc", "--bind", str(self.grpc_address)]
            commands["grpc"] = self._shell_line("grpc", argv, {}, log="grpc")
        return commands

    def _shell_line(self, name: str, argv: list[str], env: dict[str, str], *, log: str) -> str:
        assignments = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        return (
            f"echo $$ > {shlex.quote(str(self.pidfile(name)))} && "
            f"{'export ' + assignments + ' && ' if env else ''}"
            f"exec {shlex.join(argv)} >> {shlex.quote(str(self.runtime_dir / (log + '.log')))} 2>&1"
        )

    def _start_supervisord(self) -> None:
        config_path = self.runtime_dir / "supervisord.conf"
        config_path.write_text(
            render_supervisord_config(
                self._program_commands(), runtime_dir=self.runtime_dir, log=self.supervisor_log
            )
        )
        with open(self.runtime_dir / "supervisord.out", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(config_path)],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile("supervisord").write_text(f"{process.pid}\n")

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
            upstreams=self._upstreams(),
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

    def _upstreams(self) -> list[str]:
        """Nginx's upstream servers: each instance weighed by its workers (so each worker
        gets its share with an odd count). One instance is listed twice: Nginx passes a
        request whose worker died to the next entry, the same instance, where another worker
        (or the one Gunicorn forks in the dead one's place) takes it from the backlog."""
        # Each instance's last bind: its unix socket when it has one, else its port.
        servers = [
            f"{self._gunicorn_binds(name)[-1]} weight={count}"
            for name, count in self.instance_workers().items()
        ]
        return servers * 2 if len(servers) == 1 else servers

    def wait_ready(self, timeout: float) -> None:
        """Wait for each Gunicorn instance's /readyz and all its workers, then the same via
        Nginx, then the gRPC server's ServerReady (a program that exits meanwhile fails it;
        one that exited before was started again by supervisord)."""
        self._wait_ready(timeout, exits_before=len(self._exits()))

    def _exits(self) -> list[SupervisorEvent]:
        return [e for e in supervisor_events(self.supervisor_log) if e.kind == "exited"]

    def _wait_ready(self, timeout: float, *, exits_before: int) -> None:
        self._exits_before = exits_before
        deadline = time.monotonic() + timeout
        for url in self.gunicorn_urls:
            self._wait_url(url + "/readyz", deadline, timeout)
        # One worker answering is not all of them: callers count on the whole pool.
        expected = self.total_workers
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
        raise StackError(f"{url} did not answer 200 within {timeout:.0f}s ({last_error})")

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
        """Fail fast when a process this stack started has exited (a supervised program
        that exits during start-up would only be started again, and fail again)."""
        for what in ("supervisord", "nginx"):
            pid = self._pid(what)
            if pid is not None and not _alive(pid):
                raise StackError(
                    f"{what} exited during start-up; see {self._log_path(what)}"
                    + self._log_tail(what)
                )
        for event in self._exits()[self._exits_before :]:
            if event.program in self.program_names:
                raise StackError(
                    f"{event.program} exited during start-up ({event.detail}); see "
                    f"{self._log_path(event.program)}" + self._log_tail(event.program)
                )

    def _log_path(self, what: str) -> Path:
        if what == "supervisord":
            return self.supervisor_log
        return self.runtime_dir / f"{what.split('-')[0]}.log"

    def _log_tail(self, what: str, lines: int = 15) -> str:
        path = self._log_path(what)
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

    def _live_pid(self, what: str) -> int | None:
        pid = self._pid(what)
        return pid if pid is not None and _alive(pid) and _is_ours(pid, what) else None

    def _known_names(self) -> list[str]:
        """Every process name a pid file of this runtime directory may hold (a stopping
        LocalStack may not know how the running one was configured)."""
        names = ["nginx", "grpc", "gunicorn", "gunicorn-a", "gunicorn-b", "supervisord"]
        return [name for name in names if self.pidfile(name).exists()]

    def running_pids(self) -> dict[str, int]:
        """{name: pid} of each live process: "nginx", "grpc", "gunicorn" (or "gunicorn-a"
        and "gunicorn-b": the masters) and "supervisord"."""
        pids = {}
        for what in self._known_names():
            pid = self._live_pid(what)
            if pid is not None:
                pids[what] = pid
        return pids

    def master_pids(self) -> dict[str, int]:
        """{instance: pid} of the live Gunicorn masters."""
        return {
            name: pid for name, pid in self.running_pids().items() if name.startswith("gunicorn")
        }

    def worker_pids(self) -> list[int]:
        """The workers of every Gunicorn instance."""
        return [pid for pid in self._master_children() if not _is_shadow_process(pid)]

    def shadow_pids(self) -> list[int]:
        """The shadow process of every Gunicorn instance (service.runtime.shadow_server)."""
        return [pid for pid in self._master_children() if _is_shadow_process(pid)]

    def _master_children(self) -> list[int]:
        return [pid for master in self.master_pids().values() for pid in _children(master)]

    def stop(self, timeout: float = 35.0) -> list[str]:
        """Stop exactly what this stack started (by pid file); return what was stopped."""
        return self.stop_and_report(timeout)[0]

    def stop_and_report(self, timeout: float = 35.0) -> tuple[list[str], list[str]]:
        """Stop exactly what this stack started (by pid file). Returns what was stopped, and
        what was found dead or had died and been started again since the start."""
        findings = self.findings()
        stopped = []
        # Nginx first, so no new request reaches Gunicorn while it drains.
        nginx = self._live_pid("nginx")
        if nginx is not None:
            _terminate(nginx, signal.SIGQUIT, timeout)
            stopped.append(f"nginx (pid {nginx})")
        known = self._known_names()
        programs = [
            name for name in ("grpc", "gunicorn", "gunicorn-a", "gunicorn-b") if name in known
        ]
        live = {name: self._live_pid(name) for name in programs}
        supervisor = self._live_pid("supervisord")
        if supervisor is not None:
            # supervisord stops its programs (SIGTERM: Gunicorn's graceful stop, in-flight
            # calls of the gRPC server) one after the other, and starts none again.
            _terminate(supervisor, signal.SIGTERM, timeout * 2 + 15)
        for name in programs:
            pid = live[name]
            if pid is None:
                continue
            if _alive(pid) and _is_ours(pid, name):  # supervisord was gone, or gave up
                # A Gunicorn worker forked a moment before the master's SIGTERM can miss
                # it (its own handlers are not installed yet): say it again to stragglers.
                _terminate(
                    pid, signal.SIGTERM, timeout, repeat_to_children=name.startswith("gunicorn")
                )
            stopped.append(f"{name} (pid {pid})")
        if supervisor is not None:
            stopped.append(f"supervisord (pid {supervisor})")
        for name in ("nginx", *programs, "supervisord"):
            self.pidfile(name).unlink(missing_ok=True)
        return stopped, findings

    def findings(self) -> list[str]:
        """What died since the start: each process found dead, and each supervised program
        that exited unexpectedly (and was started again), from supervisord's log."""
        names = self._known_names()
        if not names:
            return []
        events = supervisor_events(self.supervisor_log)
        live = {name for name in names if self._live_pid(name) is not None}
        found = []
        for name in names:
            if name in live:
                continue
            exits = [e for e in events if e.program == name and e.kind in ("exited", "gave up")]
            if name == "supervisord":
                why = "nothing started again what died after it"
            elif exits:
                why = "; ".join(f"{e.kind} at {e.clock}: {e.detail}" for e in exits[-2:])
            else:
                why = f"exited; see {self._log_path(name)}"
            found.append(f"{name} was not running ({why})")
        for event in events:  # oldest first
            if event.kind == "exited" and event.program in live:
                found.append(
                    f"{event.program} exited at {event.clock} ({event.detail}) and was started "
                    "again"
                )
        return found


@dataclasses.dataclass(frozen=True)
class SupervisorEvent:
    clock: str  # HH:MM:SS, local time, as supervisord logged it
    kind: str  # spawned, success, exited, gave up, stopped
    program: str
    detail: str


SUPERVISOR_EVENT = re.compile(
    r"^\d{4}-\d\d-\d\d (?P<clock>\d\d:\d\d:\d\d),\d+ \w+ "
    r"(?P<kind>spawned|success|exited|gave up|stopped): '?(?P<program>[\w-]+)'? ?(?P<detail>.*)$"
)


def supervisor_events(log: Path) -> list[SupervisorEvent]:
    """The process events of a supervisord log ("exited: gunicorn-b (terminated by
    SIGKILL; not expected)"), oldest first; exits supervisord expected are left out."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        match = SUPERVISOR_EVENT.match(line)
        if match is None:
            continue
        detail = match["detail"].strip().strip("()")
        if match["kind"] == "exited" and "not expected" not in detail:
            continue
        events.append(
            SupervisorEvent(
                match["clock"],
                match["kind"],
                match["program"],
                detail.replace("; not expected", ""),
            )
        )
    return events


def render_supervisord_config(commands: dict[str, str], *, runtime_dir: Path, log: Path) -> str:
    """supervisord's configuration for the local stack: each program started again whenever
    it exits, until supervisord itself is told to stop (SIGTERM: it stops them all)."""

    def value(text: str) -> str:
        return text.replace("%", "%%")  # supervisord expands %(name)s in its values

    socket_path = runtime_dir / "supervisor.sock"
    lines = [
        "; Written by modelctl serve (service/localstack.py) at each start.",
        "[supervisord]",
        "nodaemon=true",
        "silent=true",
        f"pidfile={value(str(runtime_dir / 'supervisord.pid'))}",
        f"logfile={value(str(log))}",
        "logfile_maxbytes=0",
        "loglevel=info",
        f"childlogdir={value(str(runtime_dir))}",
        "",
    ]
    if len(str(socket_path)) < 100:  # a Unix socket's path has a length limit
        # For `supervisorctl -c <runtime dir>/supervisord.conf status`.
        lines += [
            "[unix_http_server]",
            f"file={value(str(socket_path))}",
            "chmod=0700",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{value(str(socket_path))}",
            "",
        ]
    for priority, (name, command) in enumerate(commands.items(), start=1):
        gunicorn = name.startswith("gunicorn")
        lines += [
            f"[program:{name}]",
            f"command=/bin/sh -c {value(shlex.quote(command))}",
            # Started in this order (Gunicorn first), stopped in the reverse.
            f"priority={100 + priority}",
            "autostart=true",
            "autorestart=true",
            # A Gunicorn master loads every served model before it listens.
            "startsecs=1",
            "startretries=5",
            "stopsignal=TERM",
            # Gunicorn's graceful_timeout (30 s) for requests in flight; gRPC's grace (10 s).
            f"stopwaitsecs={35 if gunicorn else 15}",
            "stdout_logfile=NONE",
            "stderr_logfile=NONE",
            "",
        ]
    return "\n".join(lines)


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
    program = what.split("-")[0]  # gunicorn-a is a gunicorn
    return program in cmdline or (program == "gunicorn" and "model-service" in cmdline)


def _is_shadow_process(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return shadow_server.__name__.encode() in command


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
