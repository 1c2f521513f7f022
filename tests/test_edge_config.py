"""Nginx's configuration as rendered from deploy/nginx.conf: `nginx -t` accepts every
combination the settings (and the balancer's variables) can produce, the bodies Nginx answers
with itself are JSON, the defaults stay clear of what the benchmarks send, the balancer's
defaults are the settings', and the settings refuse what would not be a valid configuration.

The same template runs live in tests/integration/test_edge.py."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from loadtests import run_loadtest
from loadtests.benchlib import settings as bench_settings
from service.api import request_ids
from service.config import Settings
from service.edge import edge_variables, render, render_nginx_config
from service.localstack import NGINX_TEMPLATE, nginx_binary
from tests.fleet.test_ansible_static import EDGE_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
BALANCER_DEFAULTS = ROOT / "deploy" / "ansible" / "roles" / "balancer" / "defaults" / "main.yml"
# The highest single-row rate loadtests/bench.py has reached on one machine (docs/performance/
# history.md: hello, the ceiling, 3,555 req/s on 2 cores), rounded up.
BENCH_PEAK_REQUESTS_PER_S = 4_000
# How far above that peak the default rate limit stays, so a faster machine's benchmark
# does not trip it either.
RATE_MARGIN = 5


def require_nginx() -> str:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    return binary


def nginx_t(binary: str, config: str, runtime_dir: Path) -> subprocess.CompletedProcess:
    (runtime_dir / "nginx-tmp").mkdir(parents=True, exist_ok=True)
    path = runtime_dir / "nginx.conf"
    path.write_text(config)
    return subprocess.run(
        [binary, "-t", "-q", "-p", str(runtime_dir), "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def local_config(settings: Settings, runtime_dir: Path) -> str:
    """As the local stack renders it: two Gunicorn instances, Nginx on loopback."""
    return render_nginx_config(
        NGINX_TEMPLATE.read_text(),
        listen="127.0.0.1:18080",
        upstreams=["127.0.0.1:18000 weight=2", "127.0.0.1:18001 weight=1"],
        runtime_dir=runtime_dir,
        settings=settings,
    )


def balancer_config(settings: Settings, runtime_dir: Path) -> str:
    """As roles/balancer/tasks/render.yml renders it: every app host, one drained, Nginx on
    all addresses (a port alone)."""
    upstreams = ["10.0.0.11:8000", "10.0.0.12:8000"]
    return render(
        NGINX_TEMPLATE.read_text(),
        {
            "nginx_user": "",
            "nginx_pid": str(runtime_dir / "nginx.pid"),
            "nginx_error_log": str(runtime_dir / "error.log"),
            "nginx_access_log": str(runtime_dir / "access.log"),
            "nginx_temp_dir": str(runtime_dir / "nginx-tmp"),
            "nginx_listen": "18081",
            "nginx_upstreams": upstreams,
            "nginx_down": upstreams[1:],
            "nginx_max_fails": 3,
            "nginx_fail_timeout": "10s",
            "nginx_keepalive": 32,
            "nginx_max_body_bytes": settings.max_body_bytes,
            **edge_variables(settings, listen="18081"),
        },
    )


# Each state of each part of the template that the settings switch: the rate limit (off, per
# second with and without a burst, per minute), the connection limit, the admin networks, TLS
# (off, with and without HSTS). The parts are independent blocks; every combination is made.
RATE_STATES = (
    {"rate_limit": "off"},
    {"rate_limit": "20000r/s", "rate_limit_burst": 2000},
    {"rate_limit": "20000r/s", "rate_limit_burst": 0},
    {"rate_limit": "600r/m", "rate_limit_burst": 10},
)
CONN_STATES = ({"conn_limit_per_client": 512}, {"conn_limit_per_client": 0})
ADMIN_STATES = ({"admin_networks": ()}, {"admin_networks": ("10.1.0.0/16", "2001:db8::/32")})
TLS_STATES = ({}, {"tls": True, "hsts_max_age": 31_536_000}, {"tls": True, "hsts_max_age": 0})


def every_edge_setting(certificate) -> list[Settings]:
    cert, key = certificate
    combinations = []
    for parts in itertools.product(RATE_STATES, CONN_STATES, ADMIN_STATES, TLS_STATES):
        chosen = {name: value for part in parts for name, value in part.items()}
        if chosen.pop("tls", False):
            chosen.update(tls_certificate=str(cert), tls_certificate_key=str(key))
        combinations.append(Settings.from_mapping(chosen))
    return combinations


def test_nginx_accepts_every_configuration_the_settings_can_make(certificate, tmp_path):
    binary = require_nginx()
    checked = 0
    for index, settings in enumerate(every_edge_setting(certificate)):
        for name, make in (
            ("local", local_config),
            ("balancer", balancer_config),
        ):
            runtime_dir = tmp_path / f"{name}-{index}"
            result = nginx_t(binary, make(settings, runtime_dir), runtime_dir)
            assert result.returncode == 0, f"{name} with {settings}: {result.stderr}"
            checked += 1
    assert checked == 2 * (4 * 2 * 2 * 3)


def answers(config: str) -> list[str]:
    return re.findall(r"return \d+ '(.*)\\n';", config)


def test_every_answer_nginx_makes_is_the_services_json_error(certificate, tmp_path):
    for settings in every_edge_setting(certificate):
        config = local_config(settings, tmp_path)
        bodies = answers(config)
        assert len(bodies) >= 13
        for body in bodies:
            # Only variables that hold a JSON-safe value are in a body.
            variables = set(re.findall(r"\$[a-z_]+", body))
            assert variables <= {
                "$model_service_request_id",
                "$model_service_limit_code",
                "$model_service_limit_message",
            }
            error = json.loads(re.sub(r"\$[a-z_]+", "x", body))["error"]
            assert set(error) >= {"code", "message", "request_id"}
        # Every status Nginx may make itself has its JSON page, in each server.
        servers = 2 if settings.tls_certificate else 1
        for status in (400, 403, 404, 405, 413, 414, 429, 494, 500, 501, 502, 503, 504, 505):
            assert len(re.findall(rf"error_page (?:\d{{3}} )*{status} ", config)) == servers, status
        assert ("error_page 497" in config) == bool(settings.tls_certificate)


def test_the_request_id_rule_is_the_apps(tmp_path):
    config = local_config(Settings(), tmp_path)
    assert f'"~{request_ids._ACCEPTABLE.pattern}" $http_x_request_id;' in config
    assert re.search(r"default\s+\$request_id;", config)


def test_the_default_limits_stay_clear_of_the_benchmarks(tmp_path):
    """Every request of loadtests/ comes from 127.0.0.1 without a key: one bucket, one
    address. The defaults leave a wide margin over what they send."""
    config = local_config(Settings(), tmp_path)
    rate, burst = re.search(
        r"limit_req_zone \S+ zone=\S+ rate=(\d+)r/s;.*limit_req zone=\S+ burst=(\d+) nodelay;",
        config,
        re.DOTALL,
    ).groups()
    connections = int(re.search(r"limit_conn model_service_conn (\d+);", config)[1])
    # The benchmarks' wrk options (loadtests/bench.py and the others take them from here).
    parser = argparse.ArgumentParser()
    bench_settings.add_wrk_arguments(parser)
    bench_default = parser.parse_args([]).connections
    assert bench_default == 16
    # The most connections (Locust users) any of them can be told to open.
    most_connections = max(bench_settings.MAX_CONNECTIONS, run_loadtest.MAX_USERS)
    assert connections >= 2 * most_connections
    # All of those connections' first requests at once fit in the burst.
    assert int(burst) >= 4 * most_connections
    assert int(rate) >= RATE_MARGIN * BENCH_PEAK_REQUESTS_PER_S


def test_the_balancers_defaults_are_the_settings_defaults():
    defaults = yaml.safe_load(BALANCER_DEFAULTS.read_text())
    settings = Settings()
    # HTTPS's own port on a balancer (root binds it); 8443 for `modelctl serve`.
    assert defaults["balancer_tls_port"] == 443
    for name in sorted(set(EDGE_SETTINGS) - {"tls_port"}):
        value = defaults[f"balancer_{name}"]
        expected = getattr(settings, name)
        assert (tuple(value) if isinstance(value, list) else value) == expected, name


def test_tls_listens_next_to_the_plain_listener_and_redirects_there(certificate, tmp_path):
    cert, key = certificate
    settings = Settings(tls_certificate=str(cert), tls_certificate_key=str(key), tls_port=18443)
    config = local_config(settings, tmp_path)
    assert "listen 127.0.0.1:18080;" in config
    assert "listen 127.0.0.1:18443 ssl;" in config
    assert "return 308 https://$host:18443$request_uri;" in config
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in config
    on_443 = Settings(tls_certificate=str(cert), tls_certificate_key=str(key), tls_port=443)
    balancer = balancer_config(on_443, tmp_path)
    # A balancer listens on every address; on HTTPS's own port the redirect names no port.
    assert "listen 18081;" in balancer and "listen 443 ssl;" in balancer
    assert "return 308 https://$host$request_uri;" in balancer


def test_without_tls_there_is_no_https_and_no_hsts(tmp_path):
    config = local_config(Settings(), tmp_path)
    assert "ssl" not in config and "Strict-Transport-Security" not in config
    assert "return 308" not in config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rate_limit": "5r/h"}, "rate_limit"),
        ({"rate_limit": "0r/s"}, "rate_limit"),
        ({"rate_limit": "10r/s; deny all"}, "rate_limit"),
        ({"rate_limit_burst": -1}, "rate_limit_burst"),
        ({"conn_limit_per_client": -1}, "conn_limit_per_client"),
        ({"admin_networks": "10.0.0.1/8"}, "admin_networks"),
        ({"admin_networks": "10.0.0.0/8; allow all"}, "admin_networks"),
        ({"tls_certificate": "/c.pem"}, "go together"),
        ({"tls_certificate": "/a b.pem", "tls_certificate_key": "/k.pem"}, "tls_certificate"),
        ({"tls_certificate": "/c.pem", "tls_certificate_key": "/k;.pem"}, "tls_certificate_key"),
        ({"tls_port": 0}, "tls_port"),
        ({"hsts_max_age": -1}, "hsts_max_age"),
    ],
)
def test_edge_settings_that_would_not_make_a_valid_configuration_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_mapping(values)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--rate-limit", "5r/h"], "rate_limit"),
        (["--admin-network", "10.0.0.1/8"], "admin_networks"),
        (["--tls-cert", __file__], "go together"),
    ],
)
def test_serve_refuses_edge_options_before_starting_anything(option, message, tmp_path, capsys):
    from service.cli import main

    runtime_dir = tmp_path / "run"
    code = main(["serve", "--store", str(tmp_path), "--runtime-dir", str(runtime_dir), *option])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not runtime_dir.exists()
