"""What tests share: the demo models as the tests know them, waiting on a condition, and
starting the real stack (Nginx -> Gunicorn on free loopback ports), stopped by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from service.localstack import LocalStack, free_port, nginx_binary

# The demo models (service/training/demo_specs), trained once per session into
# `trained_store_dir`, each at version 1 with the production alias. Lists, as JSON gives
# them back (compare, copy, never change in place).
IRIS = "iris-classifier"
CANCER = "breast-cancer-classifier"
DIABETES = "diabetes-regressor"
DEMO_MODELS = [IRIS, CANCER, DIABETES]

IRIS_FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
IRIS_OBJECT = dict(zip(IRIS_FEATURES, IRIS_ROW, strict=True))
# One flower of each class, and the class the demo classifier gives it.
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
IRIS_EXPECTED = ["setosa", "virginica", "versicolor"]

T = TypeVar("T")


def eventually(
    condition: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str | None = None,
    *,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """The first truthy value ``condition()`` returns, asked every ``interval`` seconds.
    After ``timeout`` seconds the test fails with ``message`` and the last value seen.
    An exception of a type in ``ignoring`` (a host restarting) counts as a falsy value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except ignoring as exc:
            value = exc  # type: ignore[assignment]
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            what = message or condition.__doc__ or getattr(condition, "__name__", "condition")
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {value!r})")
        time.sleep(interval)


def nginx_required() -> bool:
    return bool(os.environ.get("MODEL_SERVICE_REQUIRE_NGINX") or os.environ.get("CI"))


def require_nginx() -> None:
    """Skip without Nginx; CI (and MODEL_SERVICE_REQUIRE_NGINX) fails instead."""
    if nginx_binary() is None:
        if nginx_required():
            pytest.fail("nginx is not installed, and CI requires it (apt-get install -y nginx)")
        pytest.skip("nginx is not installed (apt-get install -y nginx)")


# Two workers, so Nginx has two Gunicorn instances to balance between (and fail over to).
STACK_WORKERS = 2
STACK_READY_TIMEOUT_S = 90  # two shared cores start a stack slowly


@contextlib.contextmanager
def running_stack(
    directory: Path,
    *,
    store_from: Path | None = None,
    store: Path | None = None,
    env: dict[str, str] | None = None,
    workers: int = STACK_WORKERS,
    grpc_port: int | None = None,
    use_nginx: bool | None = True,
    before_start: Callable[[LocalStack], None] | None = None,
) -> Iterator[LocalStack]:
    """The stack, its files under ``directory``, serving ``store`` in place, or a private
    copy of ``store_from`` (usually `trained_store_dir`), or else an empty store. Stopped by
    pid however the block ends. ``before_start`` sees the stack first (to write keys or
    settings into its store). ``use_nginx=None``: Nginx in front when it is installed."""
    if use_nginx is True:
        require_nginx()
    if store is None:
        store = directory / "model_store"
        if store_from is None:
            store.mkdir(parents=True)
        else:
            shutil.copytree(store_from, store)
    stack = LocalStack(
        runtime_dir=directory / "run",
        store=store,
        port=free_port(),
        workers=workers,
        use_nginx=use_nginx,
        extra_env=dict(env or {}),
        grpc_port=grpc_port,
    )
    if before_start is not None:
        before_start(stack)
    try:
        stack.start(ready_timeout=STACK_READY_TIMEOUT_S)
        yield stack
    finally:
        stack.stop()
