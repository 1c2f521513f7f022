"""What an installed package carries: every package under service/, and the deploy files the
server needs at run time (so a wheel serves without a source checkout)."""

from __future__ import annotations

import configparser
from pathlib import Path

from click.testing import CliRunner

from service.cli import cli
from service.localstack import GUNICORN_CONFIG, NGINX_TEMPLATE

ROOT = Path(__file__).resolve().parent.parent


def listed_packages() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}


def test_every_package_under_service_is_listed_in_setup_cfg():
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "service").rglob("__init__.py")
    }
    assert found | {"service.deploy"} == listed_packages()


def test_the_deploy_files_are_found_through_the_package():
    assert NGINX_TEMPLATE.read_text() == (ROOT / "deploy" / "nginx.conf").read_text()
    assert GUNICORN_CONFIG.read_text() == (ROOT / "deploy" / "gunicorn.conf.py").read_text()


def test_deploy_path_prints_an_installed_file_and_refuses_others():
    runner = CliRunner()
    answer = runner.invoke(cli, ["deploy-path", "gunicorn.conf.py"])
    assert answer.exit_code == 0
    assert Path(answer.output.strip()).read_text().startswith('"""Gunicorn settings')
    for name in ("nope.conf", "../setup.cfg"):
        refused = runner.invoke(cli, ["deploy-path", name])
        assert refused.exit_code != 0
        assert "no deploy file" in refused.output
