"""How the local stack lays out its processes, without starting them: the Gunicorn instances
and their workers, Nginx's upstream list, supervisord's configuration, and what a stop
reports from the pid files and supervisord's log."""

from __future__ import annotations

import subprocess

import pytest

from service.localstack import (
    LocalStack,
    StackError,
    render_supervisord_config,
    supervisor_events,
)

SUPERVISOR_LOG = """\
2026-12-06 17:45:31,180 INFO supervisord started with pid 30535
2026-12-06 17:45:32,183 INFO spawned: 'gunicorn-a' with pid 30562
2026-12-06 17:45:33,240 INFO success: gunicorn-a entered RUNNING state, process has stayed up
2026-12-06 17:46:01,002 WARN exited: gunicorn-b (terminated by SIGKILL; not expected)
2026-12-06 17:46:02,010 INFO spawned: 'gunicorn-b' with pid 31000
2026-12-06 17:46:09,500 WARN exited: grpc (exit status 1; not expected)
2026-12-06 17:46:15,500 INFO gave up: grpc entered FATAL state, too many start retries too quickly
2026-12-06 17:47:48,323 INFO stopped: gunicorn-a (exit status 0)
2026-12-06 17:47:48,400 INFO exited: gunicorn-a (exit status 0; expected)
"""


def stack(tmp_path, **options) -> LocalStack:
    options.setdefault("use_nginx", True)
    return LocalStack(runtime_dir=tmp_path / "run", store=tmp_path / "store", **options)


@pytest.mark.parametrize(
    ("workers", "names", "split"),
    [
        (1, ["gunicorn"], [1]),
        (2, ["gunicorn-a", "gunicorn-b"], [1, 1]),
        (3, ["gunicorn-a", "gunicorn-b"], [2, 1]),
        (4, ["gunicorn-a", "gunicorn-b"], [2, 2]),
    ],
)
def test_two_instances_share_the_workers(tmp_path, workers, names, split):
    local = stack(tmp_path, workers=workers)
    assert local.gunicorn_names == names
    assert list(local.instance_workers().values()) == split


def test_without_nginx_or_with_one_asked_for_there_is_one_instance(tmp_path):
    assert stack(tmp_path, workers=4, use_nginx=False).gunicorn_names == ["gunicorn"]
    assert stack(tmp_path, workers=4, instances=1).instance_workers() == {"gunicorn": 4}
    with pytest.raises(StackError, match="need Nginx"):
        stack(tmp_path, workers=4, use_nginx=False, instances=2)


def test_nginx_weighs_each_instance_by_its_workers(tmp_path):
    local = stack(tmp_path, workers=3, gunicorn_port=9001)
    servers = local._upstreams()
    assert servers[0] == f"unix:{local.runtime_dir}/gunicorn-a.sock weight=2"
    assert servers[1] == f"unix:{local.runtime_dir}/gunicorn-b.sock weight=1"


def test_one_instance_is_listed_twice_so_nginx_retries_on_it(tmp_path):
    local = stack(tmp_path, workers=2, instances=1, gunicorn_port=9001)
    assert local._upstreams() == [f"unix:{local.runtime_dir}/gunicorn.sock weight=2"] * 2


def test_each_instance_listens_on_its_port_and_on_a_unix_socket_for_nginx(tmp_path):
    local = stack(tmp_path, workers=2, gunicorn_port=9001)
    binds = local._program_commands()["gunicorn-a"]
    assert f"MODEL_SERVICE_BIND=127.0.0.1:9001,unix:{local.runtime_dir}/gunicorn-a.sock" in binds
    # No Nginx, no socket; none asked for (a baseline of the benchmarks); a path too long
    # for a socket address: Nginx uses the port.
    assert stack(tmp_path, workers=2, use_nginx=False, instances=1).gunicorn_socket("a") is None
    tcp = stack(tmp_path, workers=2, gunicorn_port=9001, unix_sockets=False)
    assert tcp._upstreams()[0] == "127.0.0.1:9001 weight=1"
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    local = stack(deep, workers=2, gunicorn_port=9001)
    assert local.gunicorn_socket("gunicorn-a") is None
    assert local._upstreams()[0] == "127.0.0.1:9001 weight=1"


def test_supervisord_restarts_each_program_and_stops_gunicorn_last(tmp_path):
    text = render_supervisord_config(
        {"gunicorn-a": "exec a", "gunicorn-b": "exec b", "grpc": "echo 100% && exec c"},
        runtime_dir=tmp_path,
        log=tmp_path / "supervisord.log",
    )
    sections = {
        block.split("]")[0].lstrip("["): block for block in text.split("\n[") if "]" in block
    }
    priorities = {
        name: int(sections[f"program:{name}"].split("priority=")[1].split()[0])
        for name in ("gunicorn-a", "gunicorn-b", "grpc")
    }
    # Stopped in the reverse of this order: the gRPC server first, Gunicorn last.
    assert priorities["gunicorn-a"] < priorities["gunicorn-b"] < priorities["grpc"]
    for name in priorities:
        assert "autorestart=true" in sections[f"program:{name}"]
    assert "100%%" in sections["program:grpc"]  # supervisord would expand a lone %
    assert "nodaemon=true" in text


def test_supervisor_events_are_the_unexpected_exits_and_what_followed(tmp_path):
    log = tmp_path / "supervisord.log"
    log.write_text(SUPERVISOR_LOG)
    events = supervisor_events(log)
    exits = [(e.program, e.detail) for e in events if e.kind == "exited"]
    assert exits == [("gunicorn-b", "terminated by SIGKILL"), ("grpc", "exit status 1")]
    assert ("grpc", "gave up") in [(e.program, e.kind) for e in events]


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_stop_reports_what_died_and_what_was_started_again(tmp_path):
    local = stack(tmp_path, workers=2, grpc_port=9002)
    local.runtime_dir.mkdir(parents=True)
    local.supervisor_log.write_text(SUPERVISOR_LOG)
    # This test process stands for the live ones (its command line names pytest, so it is
    # not taken for gunicorn): only dead pids and the log speak.
    for name in ("supervisord", "grpc", "gunicorn-a", "nginx"):
        local.pidfile(name).write_text(f"{dead_pid()}\n")
    findings = local.findings()
    assert "supervisord was not running (nothing started again what died after it)" in findings
    assert (
        "grpc was not running (exited at 17:46:09: exit status 1; "
        "gave up at 17:46:15: entered FATAL state, too many start retries too quickly)"
    ) in findings
    assert any(f.startswith("gunicorn-a was not running (exited; see ") for f in findings)
    assert any(f.startswith("nginx was not running (exited; see ") for f in findings)
    stopped, reported = local.stop_and_report(timeout=1)
    assert stopped == [] and reported == findings
    assert not list(local.runtime_dir.glob("*.pid"))
    assert local.findings() == []
