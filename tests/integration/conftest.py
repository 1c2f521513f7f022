"""The real stack: Gunicorn with deploy/gunicorn.conf.py behind Nginx with deploy/nginx.conf,
on free loopback ports, stopped by pid when the tests are done."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from service.localstack import LocalStack, free_port, nginx_binary

pytestmark = pytest.mark.integration

DEMO_STACK_WORKERS = 2


def nginx_required() -> bool:
    return bool(os.environ.get("MODEL_SERVICE_REQUIRE_NGINX") or os.environ.get("CI"))


def require_nginx() -> None:
    if nginx_binary() is None:
        if nginx_required():
            pytest.fail("nginx is not installed, and CI requires it (apt-get install -y nginx)")
        pytest.skip("nginx is not installed (apt-get install -y nginx)")


def wait_for(condition, timeout: float = 30.0, step: float = 0.1):
    """The first true value ``condition()`` returns, polled every ``step`` seconds; fails
    the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not true within {timeout}s: {condition.__doc__ or condition}")


@contextlib.contextmanager
def nginx_stack(
    tmp_path_factory,
    name: str,
    extra_env: dict[str, str],
    *,
    store_from: Path | None = None,
    workers: int = DEMO_STACK_WORKERS,
    grpc_port: int | None = None,
    before_start: Callable[[LocalStack], None] | None = None,
) -> Iterator[LocalStack]:
    """Nginx -> Gunicorn workers (and a gRPC server when ``grpc_port`` is given) over a
    private copy of ``store_from`` (without it, an empty store), stopped by pid.
    ``before_start`` sees the stack first."""
    require_nginx()
    base = tmp_path_factory.mktemp(name)
    store = base / "model_store"
    if store_from is None:
        store.mkdir()
    else:
        shutil.copytree(store_from, store)
    stack = LocalStack(
        runtime_dir=base / "run",
        store=store,
        port=free_port(),
        workers=workers,
        use_nginx=True,
        extra_env=extra_env,
        grpc_port=grpc_port,
    )
    if before_start is not None:
        before_start(stack)
    stack.start(ready_timeout=90)
    try:
        yield stack
    finally:
        stack.stop()


def demo_stack(
    trained_store_dir: Path,
    tmp_path_factory,
    name: str,
    extra_env: dict[str, str],
    **options,
) -> contextlib.AbstractContextManager[LocalStack]:
    """nginx_stack over a private copy of the demo store, with 2 workers unless told."""
    return nginx_stack(tmp_path_factory, name, extra_env, store_from=trained_store_dir, **options)


@pytest.fixture(scope="module")
def stack(trained_store_dir, tmp_path_factory):
    with demo_stack(
        trained_store_dir, tmp_path_factory, "stack", {"MODEL_SERVICE_RELOAD_INTERVAL": "0.2"}
    ) as started:
        yield started


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session
