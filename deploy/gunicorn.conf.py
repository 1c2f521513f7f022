"""Gunicorn settings for model-service, one documented setting at a time.

Run: gunicorn -c deploy/gunicorn.conf.py service.wsgi:app
Environment knobs (set by `modelctl serve`, systemd units or by hand):
  MODEL_SERVICE_BIND      addresses to listen on, comma-separated (default 127.0.0.1:8000;
                          unix:PATH for a unix socket)
  MODEL_SERVICE_WORKERS   worker processes (default: one per CPU core)
  MODEL_SERVICE_HOST_WORKERS  workers of all the instances on this host (default: WORKERS)
  MODEL_SERVICE_WORKER_CLASS  sync (the default) or gthread
  MODEL_SERVICE_THREADS   request threads per gthread worker (default 1)
  MODEL_SERVICE_PIDFILE   where the master writes its pid
  MODEL_SERVICE_WORKER_TIMEOUT  seconds a request may hold a worker (default 60)
  MODEL_SERVICE_MAX_REQUESTS    requests before a worker is recycled (default 20000; 0: never)
  MODEL_SERVICE_ACCESS_LOG  Gunicorn's text access log ("-": stdout; off by default)
  MODEL_SERVICE_ERROR_LOG   where the JSON logs go ("-": stderr, the default)
  PROMETHEUS_MULTIPROC_DIR  an empty directory the workers share their metrics through;
                          set and wiped by the start script, before Gunicorn starts
  MODEL_SERVICE_*         the service's own settings (see service/config.py)
"""

import gc
import os

from gunicorn.glogging import Logger as GunicornLogger

from service import gunicorn_send

# --- Server socket -----------------------------------------------------------
# Loopback only by default: Nginx is the public face and the one that buffers.
# `modelctl serve` adds a unix socket for its Nginx, on the same host: a connection per
# request (sync workers do not keep them alive) costs less there than over TCP.
bind = [
    address.strip()
    for address in os.environ.get("MODEL_SERVICE_BIND", "127.0.0.1:8000").split(",")
    if address.strip()
]
# Connections waiting for a free worker; Nginx retries elsewhere when it overflows.
backlog = 2048

# --- Worker processes --------------------------------------------------------
# Predictions are CPU-bound, so one process per core is the useful maximum;
# more only adds context switches and memory.
workers = int(os.environ.get("MODEL_SERVICE_WORKERS") or os.cpu_count() or 1)
# Sync workers: one request at a time per process, no GIL contention. Safe
# because Nginx buffers whole requests and responses (proxy_buffering on), so
# a slow client never holds a worker. Measured on 2 cores (`make bench-workers`,
# iris through Nginx, docs/performance/last-run.md): sync x 2 gave the highest single-row
# and 1,000-row rates, the lowest p99 and the least memory; sync x 4 was ~8%
# slower with ~60 MiB more; gthread (2 x 4 or 4 x 2 threads) doubled p99, since a
# worker's threads queue for its one GIL. MODEL_SERVICE_WORKER_CLASS=gthread with
# MODEL_SERVICE_THREADS=N gives each worker N request threads instead; threads > 1
# make Gunicorn use gthread anyway.
worker_class = os.environ.get("MODEL_SERVICE_WORKER_CLASS") or "sync"
threads = int(os.environ.get("MODEL_SERVICE_THREADS") or 1)
# Load the app, and with it every aliased model, once in the master before
# forking: workers share the models' memory copy-on-write instead of each
# unpickling its own copy.
preload_app = True
# A worker stuck in one request for longer than this is killed and replaced. Model loads
# never count against it: the master loads before it forks, and a worker loads a newly
# promoted version in a background thread (service/runtime/registry.py), so a model that
# takes longer than this to load cannot make the workers time out, again and again.
timeout = int(os.environ.get("MODEL_SERVICE_WORKER_TIMEOUT") or 60)
# On shutdown or HUP, in-flight requests get this long to finish.
graceful_timeout = 30
# Ignored by sync workers; how long a gthread worker keeps an idle connection.
keepalive = 5
# Recycle workers now and then so slow leaks (in any native library) stay
# bounded; jitter keeps them from all restarting at once.
max_requests = int(os.environ.get("MODEL_SERVICE_MAX_REQUESTS") or 20000)
max_requests_jitter = max_requests // 10

# --- Responses -------------------------------------------------------------------
# A response's head goes out in one send with its body, so a worker killed mid-answer
# leaves Nginx nothing it has passed on, and Nginx retries on the other instance
# (service/gunicorn_send.py says why).
gunicorn_send.install()

# --- Native thread pools -----------------------------------------------------
# BLAS/OpenMP pools default to one thread per core *per process*: with N
# workers that is N x cores threads fighting over the cores. Give each worker
# its share. Set before the app (and numpy) is imported by preload_app.
# MODEL_SERVICE_HOST_WORKERS: the workers of every instance on this host (the local stack
# runs two instances), when this instance has only part of them.
host_workers = int(os.environ.get("MODEL_SERVICE_HOST_WORKERS") or workers)
threads_per_worker = max(1, (os.cpu_count() or 1) // host_workers)
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, str(threads_per_worker))

# --- Logging ---------------------------------------------------------------------
# The app writes one JSON line per request (service/monitoring/logs.py: request id, route,
# model, version, status, instances, latency, worker pid) and Nginx keeps its access log
# with upstream timings, so Gunicorn's own text access log is off by default: a third
# line per request costs ~5% of a worker's time at full load. It still has what the other
# two lack (requests Gunicorn refused before the app saw them: a malformed request line,
# headers over the limits); MODEL_SERVICE_ACCESS_LOG="-" (stdout) or a file turns it on.
accesslog = os.environ.get("MODEL_SERVICE_ACCESS_LOG", "") or None
errorlog = os.environ.get("MODEL_SERVICE_ERROR_LOG", "-")
loglevel = os.environ.get("MODEL_SERVICE_LOG_LEVEL", "info")
# Remote address, request line, status, bytes, latency in ms, the request id
# (echoed by the app as a response header) and the worker pid.
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s pid=%(p)s'


def _log_handler(destination, formatter, stream):
    if destination in (None, "-"):
        return {"class": "logging.StreamHandler", "formatter": formatter, "stream": stream}
    return {"class": "logging.FileHandler", "formatter": formatter, "filename": destination}


# Gunicorn's error log and the application's loggers (service.*, through the root
# logger) as JSON lines, one format for everything the processes say.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "service.monitoring.logs.JsonFormatter"},
        "access": {"format": "%(message)s"},
    },
    "handlers": {
        "json": _log_handler(errorlog, "json", "ext://sys.stderr"),
        "access": _log_handler(accesslog, "access", "ext://sys.stdout"),
    },
    "root": {"level": loglevel.upper(), "handlers": ["json"]},
    "loggers": {
        "gunicorn.error": {
            "level": loglevel.upper(),
            "handlers": ["json"],
            "propagate": False,
            "qualname": "gunicorn.error",
        },
        "gunicorn.access": {
            # With logconfig_dict Gunicorn hands every request to this logger; with the
            # access log off it drops them at once.
            "level": "INFO" if accesslog else "CRITICAL",
            "handlers": ["access"] if accesslog else [],
            "propagate": False,
            "qualname": "gunicorn.access",
        },
    },
}


class AccessLogWhenConfigured(GunicornLogger):
    """Gunicorn's logger, minus the access-log work when there is no access log.

    With logconfig_dict set, Gunicorn formats every request's access-log atoms even with
    no access log configured, then drops the line: ~7% of a worker's time under
    single-row load (py-spy)."""

    def access(self, resp, req, environ, request_time):
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


logger_class = AccessLogWhenConfigured

# --- Process naming, pid and control ----------------------------------------
proc_name = "model-service"
pidfile = os.environ.get("MODEL_SERVICE_PIDFILE") or None
# Recent Gunicorn versions open a control socket at one fixed path per user; several
# instances on a host would fight over it, and nothing here uses it.
control_socket_disable = True


# --- Hooks: small, logging through server.log --------------------------------
def when_ready(server):
    # The master has loaded the app (preload_app). Move everything allocated so
    # far out of the garbage collector's reach, so collections in the workers
    # do not write to (and so un-share) the pages holding the models.
    gc.collect()
    gc.freeze()
    # One shadow process for all the workers, so a worker (re)start never starts one.
    from service.runtime import shadow

    shadow.start_host()
    server.log.info("model-service ready: %d workers on %s", server.num_workers, ", ".join(bind))


def post_fork(server, worker):
    # A worker whose master died (SIGKILL, OOM) leaves at once, gracefully: orphans would
    # keep the listening socket, so the master that supervisord starts again could not bind
    # it, while they no longer get replaced. Its requests in flight still finish.
    _terminate_with_parent(server.pid)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads_per_worker)
    server.log.info("worker %s started (%d native threads)", worker.pid, threads_per_worker)
    # Counted by each worker in its own metrics file: restarts = starts - workers.
    from service.monitoring import metrics

    metrics.worker_started()


def pre_fork(server, worker):
    # The shadow process outlives the workers; if it has died, start it again before the
    # new worker needs it.
    from service.runtime import shadow_server

    shadow_server.ensure_host()


def on_exit(server):
    from service.runtime import shadow_server

    shadow_server.stop_host()


def post_request(worker, req, environ, resp):
    # Runs after the answer has gone out. After a large body, give the memory the request
    # freed back to the OS (glibc keeps it otherwise): at most every few seconds.
    from service.runtime import heap

    heap.after_request(environ.get("CONTENT_LENGTH"))


def worker_exit(server, worker):
    # A worker is a fork of the master, which imported onnxruntime (preload_app): the C++
    # runtime started a thread of its own at import, and its static destructor joins that
    # thread at process exit. In the fork the thread does not exist, so the join throws
    # (std::system_error, "Invalid argument") and the worker dies of SIGABRT, or hangs
    # until SIGKILL, at every stop and max_requests recycle. Like multiprocessing's forked
    # children, a worker leaves through os._exit once Python's own exit work is done (atexit:
    # the flushers of the prediction log and of the metrics, logging's handlers), so only
    # the master, which owns those threads, runs the C++ destructors.
    import atexit
    import sys

    exiting = sys.exc_info()[1]
    code = exiting.code if isinstance(exiting, SystemExit) else 0 if exiting is None else 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code if isinstance(code, int) else 1)


def _terminate_with_parent(master_pid):
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):  # prctl is Linux's
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != master_pid:  # the master died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_abort(worker):
    worker.log.warning(
        "worker %s aborted (timeout): a request ran longer than %ss", worker.pid, timeout
    )


def child_exit(server, worker):
    server.log.info("worker %s exited", worker.pid)
    # The dead worker's live gauges go; its counters and histograms stay in the sums.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
