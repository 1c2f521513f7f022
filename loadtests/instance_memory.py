"""The memory one Gunicorn instance costs against two with the same total of workers (what
the local stack runs behind Nginx so that a dying worker's request is retried elsewhere).

For each layout: start the stack on a copy of the store, send predictions to every served
model until every worker has answered some, then sum the proportional set size (PSS,
/proc/<pid>/smaps_rollup: shared pages split between the processes sharing them) of the
Gunicorn masters and workers, and of supervisord.

    .venv/bin/python loadtests/instance_memory.py --store model_store --workers 2 4
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from loadtests.benchlib.stacks import total_pss_kib  # noqa: E402
from service.localstack import LocalStack, free_port  # noqa: E402
from service.store import ModelStore  # noqa: E402

WARM_UP_REQUESTS = 300


def golden_bodies(store: ModelStore) -> dict[str, dict]:
    bodies = {}
    for name in store.names():
        meta = store.metadata(name, store.aliases(name)["production"])
        bodies[name] = {"instances": meta["golden"]["instances"][:1]}
    return bodies


def measure(store_dir: Path, workers: int, instances: int, workdir: Path) -> dict[str, float]:
    store = workdir / "model_store"
    shutil.copytree(store_dir, store)
    stack = LocalStack(
        runtime_dir=workdir / "run",
        store=store,
        port=free_port(),
        workers=workers,
        use_nginx=True,
        instances=instances,
    )
    stack.start(ready_timeout=180)
    try:
        bodies = golden_bodies(ModelStore(store))
        with requests.Session() as session:
            for index in range(WARM_UP_REQUESTS):
                name = list(bodies)[index % len(bodies)]
                answer = session.post(
                    f"{stack.url}/v1/models/{name}/predict",
                    json=bodies[name],
                    headers={"Connection": "close"},
                    timeout=30,
                )
                answer.raise_for_status()
        time.sleep(1.0)  # let the workers' flushers and watchers settle
        masters = list(stack.master_pids().values())
        workers_pids = stack.worker_pids()
        supervisor = stack.running_pids()["supervisord"]
        return {
            "masters_mib": total_pss_kib(masters) / 1024,
            "workers_mib": total_pss_kib(workers_pids) / 1024,
            "supervisord_mib": total_pss_kib([supervisor]) / 1024,
        }
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "model_store")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args(argv)
    print(
        f"{'workers':>7} {'instances':>9} {'masters':>8} {'workers':>8} {'supervisord':>11}"
        f" {'total MiB':>9}"
    )
    for workers in args.workers:
        for instances in (1, 2):
            with tempfile.TemporaryDirectory(prefix="instance-memory-") as workdir:
                figures = measure(args.store.resolve(), workers, instances, Path(workdir))
            total = sum(figures.values())
            print(
                f"{workers:>7} {instances:>9} {figures['masters_mib']:>8.1f} "
                f"{figures['workers_mib']:>8.1f} {figures['supervisord_mib']:>11.1f} {total:>9.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
