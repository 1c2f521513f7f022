"""The edge: Nginx's configuration, rendered from the one template deploy/nginx.conf.

`modelctl serve` (the local stack, the tests, the benchmarks) renders it here from the
settings (rate and connection limits, admin networks, TLS); `make deploy` renders the same
file on each balancer with Ansible's template module from the inventory's balancer_*
variables. Both render with the same Jinja options, so what the tests check here is what a
balancer runs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from service.config import Settings

# Passive health of the local stack's Gunicorn instances: failures within the time before
# one is left alone for that time.
LOCAL_MAX_FAILS = 3
LOCAL_FAIL_TIMEOUT = "5s"
# Idle connections kept open to the upstream, per Nginx worker.
LOCAL_KEEPALIVE = 32


def render(template: str, variables: Mapping[str, Any]) -> str:
    """The template rendered as Ansible's template module does (trim_blocks); a variable the
    template uses and ``variables`` lacks is an error, not an empty string."""
    return _compiled(template).render(**variables)


@functools.lru_cache(maxsize=4)
def _compiled(template: str) -> jinja2.Template:
    environment = jinja2.Environment(
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # an Nginx configuration, not HTML
    )
    return environment.from_string(template)


def edge_variables(settings: Settings, *, listen: str) -> dict[str, Any]:
    """The template's edge variables from the settings: limits, admin networks and TLS (on
    the plain listener's address, at tls_port)."""
    tls_listen = ""
    if settings.tls_certificate:
        host = listen.rsplit(":", 1)[0] if ":" in listen else ""
        tls_listen = f"{host}:{settings.tls_port}" if host else str(settings.tls_port)
    return {
        "nginx_rate_limit": settings.rate_limit,
        "nginx_rate_limit_burst": settings.rate_limit_burst,
        "nginx_conn_limit_per_client": settings.conn_limit_per_client,
        "nginx_admin_networks": list(settings.admin_networks),
        "nginx_tls_listen": tls_listen,
        # Nginx reads relative paths from its prefix (the runtime directory): make them
        # absolute from here.
        "nginx_tls_certificate": _absolute(settings.tls_certificate),
        "nginx_tls_certificate_key": _absolute(settings.tls_certificate_key),
        "nginx_hsts_max_age": settings.hsts_max_age,
    }


def render_nginx_config(
    template: str,
    *,
    listen: str,
    upstreams: list[str],
    runtime_dir: Path,
    settings: Settings,
) -> str:
    """deploy/nginx.conf for the local stack: Nginx without root, every file it writes in
    ``runtime_dir``, in front of ``upstreams`` ("host:port [server parameters]")."""
    nginx_user = ""
    if os.geteuid() == 0:
        # Started as root (CI, containers): keep the workers as this user so they
        # can use the runtime dir; Nginx would otherwise switch them to "nobody".
        import pwd

        nginx_user = pwd.getpwuid(os.geteuid()).pw_name
    variables = {
        "nginx_user": nginx_user,
        "nginx_pid": str(runtime_dir / "nginx-master.pid"),
        "nginx_error_log": str(runtime_dir / "nginx-error.log"),
        "nginx_access_log": str(runtime_dir / "nginx-access.log"),
        "nginx_temp_dir": str(runtime_dir / "nginx-tmp"),
        "nginx_listen": listen,
        "nginx_upstreams": upstreams,
        "nginx_down": [],
        "nginx_max_fails": LOCAL_MAX_FAILS,
        "nginx_fail_timeout": LOCAL_FAIL_TIMEOUT,
        "nginx_keepalive": LOCAL_KEEPALIVE,
        "nginx_max_body_bytes": settings.max_body_bytes,
        **edge_variables(settings, listen=listen),
    }
    return render(template, variables)


def https_url(settings: Settings, host: str) -> str | None:
    """Where the local stack answers HTTPS, when the settings turn it on."""
    if not settings.tls_certificate:
        return None
    return f"https://{host}:{settings.tls_port}"


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if path else ""
