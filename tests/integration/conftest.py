"""The real stack: Gunicorn with deploy/gunicorn.conf.py behind Nginx with deploy/nginx.conf,
on free loopback ports, stopped by pid when the tests are done (tests/support.py starts it)."""

from __future__ import annotations

import pytest
import requests

from tests.support import running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(trained_store_dir, tmp_path_factory):
    """The demo models behind Nginx, shared by the tests of a module."""
    with running_stack(
        tmp_path_factory.mktemp("stack"),
        store_from=trained_store_dir,
        env={"MODEL_SERVICE_RELOAD_INTERVAL": "0.2"},
    ) as started:
        yield started


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session
