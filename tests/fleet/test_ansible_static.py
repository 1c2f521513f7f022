"""`make deploy`'s files checked without a fleet: the playbooks parse, the example inventory
is a valid inventory, the systemd units pass `systemd-analyze verify` and carry their
hardening, the balancer's template renders to a configuration `nginx -t` accepts with the
retry policy the routes need, and a release's name depends on its wheels alone.

Ansible comes from its own virtualenv (`make ansible`, cheap once built). Where a tool is
missing these tests skip, except in CI (CI or MODEL_SERVICE_REQUIRE_NGINX set), where they
fail."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "deploy" / "ansible"
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
INVENTORY = ROOT / "deploy" / "inventory.example.yaml"
# The one Nginx template: the balancer's, and the local stack's.
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
# The balancer variables that mirror service/config.py's edge settings (balancer_<name>).
EDGE_SETTINGS = (
    "rate_limit",
    "rate_limit_burst",
    "conn_limit_per_client",
    "admin_networks",
    "tls_certificate",
    "tls_certificate_key",
    "tls_port",
    "hsts_max_age",
)
PLAYBOOKS = ("deploy.yml", "rollback-release.yml")
# Where the units find the installed release; the test machine has none.
RELEASE_BIN = "/opt/model-service/current/venv/bin/"
APP_UNITS = ("model-service.service", "model-service-grpc.service", "model-service-sync.service")
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "Restart": "always",
}
# The routes whose POST may go to a second host (no side effects); every other POST must not.
PREDICTION_ROUTES = {
    "/v1/models/<model_ref>/predict",
    "/v1/models/<model_ref>/invocations",
    "/invocations",
    "/v2/models/<name>/infer",
    "/v2/models/<name>/versions/<version>/infer",
}


def required() -> bool:
    return bool(os.environ.get("MODEL_SERVICE_REQUIRE_NGINX") or os.environ.get("CI"))


def missing(what: str) -> None:
    if required():
        pytest.fail(f"{what} (required here)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def ansible_bin() -> Path:
    """The bin directory of .ansible-venv, built by `make ansible` when it is not up to date."""
    if shutil.which("make") is None:
        missing("make is not installed")
    built = subprocess.run(
        ["make", "-C", str(ROOT), "ansible"], capture_output=True, text=True, timeout=600
    )
    if built.returncode != 0:
        missing(f"make ansible failed: {built.stdout[-2000:]}{built.stderr[-2000:]}")
    return ROOT / ".ansible-venv" / "bin"


def ansible(ansible_bin: Path, tool: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"))
    return subprocess.run(
        [str(ansible_bin / tool), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )


# -- Ansible ------------------------------------------------------------------------------------


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_passes_the_syntax_check(ansible_bin, playbook):
    result = ansible(
        ansible_bin,
        "ansible-playbook",
        "--syntax-check",
        "-i",
        str(INVENTORY),
        str(ANSIBLE_DIR / playbook),
        "-e",
        "release_dir=/nonexistent",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stderr


def test_the_example_inventory_parses_with_every_group(ansible_bin):
    result = ansible(ansible_bin, "ansible-inventory", "-i", str(INVENTORY), "--list")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    inventory = json.loads(result.stdout)
    hostvars = inventory["_meta"]["hostvars"]
    assert len(inventory["app"]["hosts"]) >= 1
    assert len(inventory["balancer"]["hosts"]) >= 1
    assert len(inventory["store"]["hosts"]) == 1
    for host in inventory["app"]["hosts"]:
        assert {"ansible_host", "workers", "service_manager"} <= set(hostvars[host])
    (store,) = inventory["store"]["hosts"]
    assert hostvars[store]["store_path"].startswith("/")
    (balancer, *_) = inventory["balancer"]["hosts"]
    assert hostvars[balancer]["listen_port"] == 80


def task_lists() -> list[tuple[Path, list]]:
    files = [ANSIBLE_DIR / name for name in PLAYBOOKS]
    files += sorted((ANSIBLE_DIR / "roles").glob("*/tasks/*.yml"))
    lists = []
    for path in files:
        data = yaml.safe_load(path.read_text()) or []
        if path.name in PLAYBOOKS:
            for play in data:
                for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                    lists.append((path, play.get(section) or []))
        else:
            lists.append((path, data))
    return lists


TASK_KEYWORDS = {
    "name", "when", "loop", "loop_control", "register", "vars", "args", "environment",
    "changed_when", "failed_when", "delegate_to", "become", "become_user", "become_method",
    "become_flags", "tags", "run_once", "notify", "ignore_errors", "no_log", "until",
    "retries", "delay",
}  # fmt: skip


def walk_tasks(tasks: list):
    for task in tasks:
        if "block" in task:
            yield from walk_tasks(task["block"])
            yield from walk_tasks(task.get("rescue") or [])
            yield from walk_tasks(task.get("always") or [])
        else:
            yield task


def test_only_ansible_builtin_modules_are_used():
    """ansible-core is all the controller installs: no collection, so every action is one of
    ansible.builtin's, named in full."""
    for path, tasks in task_lists():
        for task in walk_tasks(tasks):
            actions = [key for key in task if key not in TASK_KEYWORDS]
            assert len(actions) == 1, f"{path.name}: {task.get('name')}: {actions}"
            assert actions[0].startswith("ansible.builtin."), f"{path.name}: {actions[0]}"


def test_the_app_hosts_roll_one_at_a_time_and_stop_at_the_first_failure():
    plays = yaml.safe_load((ANSIBLE_DIR / "deploy.yml").read_text())
    (rolling,) = [play for play in plays if play["hosts"] == "app" and "serial" in play]
    assert rolling["serial"] == 1
    assert rolling["any_errors_fatal"] is True
    assert rolling["max_fail_percentage"] == 0


def test_ansible_cfg_checks_host_keys_and_pipelines():
    config = configparser.ConfigParser()
    config.read(ANSIBLE_DIR / "ansible.cfg")
    assert config["defaults"].getboolean("host_key_checking") is True
    assert config["defaults"].getboolean("retry_files_enabled") is False
    assert config["ssh_connection"].getboolean("pipelining") is True
    assert "ControlPersist" in config["ssh_connection"]["ssh_args"]


# -- systemd units ---------------------------------------------------------------------------


def unit_files() -> list[Path]:
    return sorted(SYSTEMD_DIR.glob("*.service"))


def test_every_app_process_has_a_unit():
    assert {path.name for path in unit_files()} >= {*APP_UNITS, "model-service-balancer.service"}


@pytest.mark.parametrize("unit", unit_files(), ids=lambda path: path.name)
def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    """The unit as it is, except that the release's executables (absent here: no release is
    installed on this machine) are stubs at another path: verify checks they exist."""
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze is not installed")
    stub_bin = tmp_path / "release-bin"
    stub_bin.mkdir()
    units = tmp_path / "units"
    units.mkdir()
    # Every unit goes in the search path, so the ones this one names (BindsTo=) are found.
    for path in unit_files():
        text = path.read_text()
        for name in set(re.findall(re.escape(RELEASE_BIN) + r"([\w.-]+)", text)):
            stub = stub_bin / name
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        (units / path.name).write_text(text.replace(RELEASE_BIN, f"{stub_bin}/"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / unit.name)],
        capture_output=True,
        text=True,
        timeout=60,
        # The trailing colon keeps systemd's own directories after this one.
        env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{units}:"),
    )
    # Unknown keys and other complaints are warnings with exit 0: any line about the unit fails.
    complaints = [line for line in result.stderr.splitlines() if unit.name in line]
    assert result.returncode == 0 and not complaints, result.stderr


@pytest.mark.parametrize("unit", unit_files(), ids=lambda path: path.name)
def test_unit_is_hardened_and_always_restarted(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(unit)
    service = parser["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{unit.name}: {key}={service.get(key)}"
    assert service.get("CapabilityBoundingSet") is not None
    assert service.get("SystemCallFilter") == "@system-service"
    if unit.name in APP_UNITS:
        assert service["User"] == "model-service"
        assert service["EnvironmentFile"] == "/etc/model-service/service.env"
        # An empty bounding set: the service user's processes have no capability at all.
        assert service["CapabilityBoundingSet"] == ""


def test_gunicorn_stops_gracefully_before_systemd_kills_it():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(SYSTEMD_DIR / "model-service.service")
    service = parser["Service"]
    assert service["KillSignal"] == "SIGTERM"
    # Gunicorn's graceful_timeout is 30 s.
    assert int(service["TimeoutStopSec"]) > 30
    assert "deploy-path gunicorn.conf.py" in service["ExecStart"]
    # ExecStartPre= appears twice (configparser keeps the last): read the lines themselves.
    text = (SYSTEMD_DIR / "model-service.service").read_text()
    assert "ExecStartPre=/bin/rm -rf /run/model-service/prometheus\n" in text


# -- supervisord, where there is no systemd -------------------------------------------------------


def render(template: Path, **values) -> str:
    # Ansible's template module renders with trim_blocks.
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent),
        trim_blocks=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return environment.get_template(template.name).render(**values)


def test_supervisor_programs_match_the_units():
    text = render(
        ANSIBLE_DIR / "roles" / "app" / "templates" / "programs.conf.j2",
        inventory_hostname="app1",
        ms_user="model-service",
        ms_home="/var/lib/model-service",
        ms_env_file="/etc/model-service/service.env",
        ms_current="/opt/model-service/current",
        ms_log_dir="/var/log/model-service",
        ms_services=["model-service-sync", "model-service", "model-service-grpc"],
    )
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    programs = [section for section in parser.sections() if section.startswith("program:")]
    assert {name.split(":")[1] for name in programs} == {unit[:-8] for unit in APP_UNITS}
    for section in programs:
        program = parser[section]
        assert program["user"] == "model-service"
        assert program["autorestart"] == "true"
        assert program["stopsignal"] == "TERM"
    assert int(parser["program:model-service"]["stopwaitsecs"]) == 35
    assert "deploy-path gunicorn.conf.py" in parser["program:model-service"]["command"]


# -- the balancer ------------------------------------------------------------------------------

UPSTREAMS = ["10.0.0.11:8000", "10.0.0.12:8000", "10.0.0.13:8000"]


@pytest.fixture
def balancer_config(tmp_path) -> str:
    return render(
        NGINX_TEMPLATE,
        nginx_user="",
        nginx_pid=str(tmp_path / "nginx.pid"),
        nginx_error_log=str(tmp_path / "error.log"),
        nginx_access_log=str(tmp_path / "access.log"),
        nginx_temp_dir=str(tmp_path / "tmp"),
        nginx_listen="127.0.0.1:18080",
        nginx_upstreams=UPSTREAMS,
        nginx_down=["10.0.0.12:8000"],
        nginx_max_fails=3,
        nginx_fail_timeout="10s",
        nginx_keepalive=32,
        nginx_max_body_bytes=16777216,
        **balancer_edge_defaults(),
    )


def balancer_edge_defaults() -> dict:
    """The edge variables as render.yml passes them with the role's defaults (TLS off)."""
    defaults = yaml.safe_load(
        (ANSIBLE_DIR / "roles" / "balancer" / "defaults" / "main.yml").read_text()
    )
    edge = {
        f"nginx_{name.removeprefix('balancer_')}": value
        for name, value in defaults.items()
        if name.removeprefix("balancer_") in EDGE_SETTINGS
    }
    return {**edge, "nginx_tls_listen": ""}


def test_the_balancer_config_passes_nginx_t(balancer_config, tmp_path):
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        missing("nginx is not installed")
    config = tmp_path / "nginx.conf"
    config.write_text(balancer_config)
    # The role makes the temp directories' parent; Nginx makes the rest.
    (tmp_path / "tmp").mkdir()
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_upstream_has_every_host_with_passive_health_and_the_drained_one_down(
    balancer_config,
):
    servers = re.findall(r"^\s*server (\S+) (.*);$", balancer_config, re.MULTILINE)
    assert [address for address, _ in servers] == UPSTREAMS
    for address, options in servers:
        assert "max_fails=3" in options and "fail_timeout=10s" in options
        assert options.endswith(" down") == (address == "10.0.0.12:8000")
    assert re.search(r"^\s*keepalive 32;$", balancer_config, re.MULTILINE)


def locations(config: str) -> list[tuple[str, str, str]]:
    """(modifier, pattern, body) of each location block of the server."""
    return re.findall(r"location (=|~|\^~)?\s*(\S+) \{(.*?)\n        \}", config, re.DOTALL)


def location_for(config: str, path: str) -> str:
    """The body of the location Nginx picks for a path: an exact match, else the longest
    prefix if it is a ^~ one, else the first regex that matches, else the longest prefix."""
    blocks = locations(config)
    for modifier, pattern, body in blocks:
        if modifier == "=" and pattern == path:
            return body
    prefixes = [
        (pattern, modifier, body)
        for modifier, pattern, body in blocks
        if modifier in ("", "^~") and path.startswith(pattern)
    ]
    _, modifier, longest = max(prefixes, key=lambda item: len(item[0]))
    if modifier == "^~":
        return longest
    for modifier, pattern, body in blocks:
        if modifier == "~" and re.search(pattern, path):
            return body
    return longest


def post_routes(tmp_path) -> list[str]:
    from service import create_app

    (tmp_path / "store").mkdir()
    app = create_app({"store": tmp_path / "store", "state_dir": tmp_path / "state"})
    try:
        return sorted(
            rule.rule
            for rule in app.url_map.iter_rules()
            if "POST" in (rule.methods or ()) and not rule.rule.startswith("/static")
        )
    finally:
        app.extensions["model_service"].registry.stop()


def test_only_prediction_routes_are_retried_on_another_host(balancer_config, tmp_path):
    """Every POST route of the app, at the location Nginx gives it: predictions may be sent
    to a second host (non_idempotent), a promote, a rollback, a reload or feedback never."""
    routes = post_routes(tmp_path)
    assert set(routes) >= PREDICTION_ROUTES
    assert any("/admin/" in route for route in routes)
    for route in routes:
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "1" if m[1] == "version" else "iris", route)
        body = location_for(balancer_config, path)
        retried = re.search(r"proxy_next_upstream ([^;]*);", body)
        if route in PREDICTION_ROUTES:
            assert retried and "non_idempotent" in retried[1], route
            assert {"error", "timeout", "http_502", "http_503"} <= set(retried[1].split())
        else:
            assert not retried or "non_idempotent" not in retried[1], route
    # The server-wide policy, which every other location inherits: idempotent requests only.
    server_wide = re.search(r"^        proxy_next_upstream ([^;]*);$", balancer_config, re.M)
    assert server_wide and server_wide[1] == "error timeout"


def test_the_balancer_keeps_the_single_host_stacks_behaviour(balancer_config):
    for line in (
        "proxy_buffering on;",
        "add_header X-Request-ID $model_service_request_id always;",
        "proxy_hide_header X-Request-ID;",
        "error_page 502 503 =503 /_edge/503;",
        "client_max_body_size 16777216;",
    ):
        assert line in balancer_config
    # The JSON bodies Nginx answers with itself are valid JSON.
    bodies = re.findall(r"return \d+ '(.*)\\n';", balancer_config)
    assert len(bodies) >= 10
    for body in bodies:
        json.loads(re.sub(r"\$[a-z_]+", "x", body))


# -- the release -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_release():
    sys.path.insert(0, str(ANSIBLE_DIR))
    try:
        import build_release
    finally:
        sys.path.remove(str(ANSIBLE_DIR))
    return build_release


def fake_wheelhouse(directory: Path, project: bytes) -> Path:
    directory.mkdir()
    (directory / "model_service-0.1.0-py3-none-any.whl").write_bytes(project)
    (directory / "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl").write_bytes(b"numpy")
    (directory / "supervisor-4.3.0-py2.py3-none-any.whl").write_bytes(b"supervisor")
    return directory


def test_a_release_is_named_by_its_wheels(build_release, tmp_path):
    project = "model_service-0.1.0-py3-none-any.whl"
    first = build_release.describe(fake_wheelhouse(tmp_path / "a", b"one"), project, "0.1.0", None)
    same = build_release.describe(fake_wheelhouse(tmp_path / "b", b"one"), project, "0.1.0", None)
    other = build_release.describe(fake_wheelhouse(tmp_path / "c", b"two"), project, "0.1.0", None)
    assert first["release"] == same["release"] != other["release"]
    assert re.fullmatch(r"0\.1\.0-[0-9a-f]{12}", first["release"])
    assert first["requirements"] == ["numpy==2.4.6"]
    assert first["supervisor_requirement"] == "supervisor==4.3.0"
    assert first["wheels"][0]["sha256"] == hashlib.sha256(b"one").hexdigest()
    named = build_release.describe(fake_wheelhouse(tmp_path / "d", b"one"), project, "0.1.0", "x")
    assert named["release"] == "x" and named["digest"] == first["digest"]


@pytest.mark.parametrize("name", ["../etc", "a b", "", "-x"])
def test_a_release_name_must_be_a_plain_directory_name(build_release, name, capsys):
    with pytest.raises(SystemExit):
        build_release.main(["--out", "/nonexistent", "--release", name])
    assert "--release" in capsys.readouterr().err
