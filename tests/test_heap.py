"""HeapTrimmer: malloc_trim after large requests, never more often than its interval."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from service.runtime import heap

GUNICORN_CONF = Path(__file__).resolve().parent.parent / "deploy" / "gunicorn.conf.py"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def trimmer():
    clock = FakeClock()
    made = heap.HeapTrimmer(large_body_bytes=1000, min_interval_s=5.0, clock=clock)
    if not made.available:
        pytest.skip("this C library has no malloc_trim")
    return made, clock


def test_only_after_a_large_body_does_it_trim(trimmer):
    made, _ = trimmer
    assert not made.after_request("999")
    assert not made.after_request(None)
    assert not made.after_request("not a number")
    assert made.after_request("1000")
    assert made.trims == 1


def test_trims_at_most_once_per_interval_and_catches_up_after_a_burst(trimmer):
    made, clock = trimmer
    assert made.after_request(5000)
    clock.now += 4.9
    assert not made.after_request(5000)  # too soon: noted for later
    clock.now += 0.2
    # A small request once the interval has passed trims what the large one left.
    assert made.after_request(10)
    clock.now += 10
    assert not made.after_request(10)  # nothing large since
    assert made.trims == 2


def test_gunicorn_post_request_hook_trims_after_a_large_body(monkeypatch):
    # Loading the config sets native thread counts in os.environ: undone after the test.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        present = variable in os.environ
        monkeypatch.setenv(variable, os.environ.get(variable, "1"))
        if not present:
            monkeypatch.delenv(variable)
    spec = importlib.util.spec_from_file_location("gunicorn_conf_under_test", GUNICORN_CONF)
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    made = heap.HeapTrimmer(large_body_bytes=1000, min_interval_s=5.0, clock=FakeClock())
    if not made.available:
        pytest.skip("this C library has no malloc_trim")
    monkeypatch.setattr(heap, "_worker_trimmer", made)
    conf.post_request(None, None, {"CONTENT_LENGTH": "10"}, None)
    assert made.trims == 0
    conf.post_request(None, None, {"CONTENT_LENGTH": "300000"}, None)
    assert made.trims == 1
