"""`make deploy` to a real fleet: three app hosts, a balancer and a store host, each a
network namespace with its own sshd and file system view (deploy/testfleet), Ansible doing
the remote work. The package's one fleet (conftest.py); the tests run in file order and build
on each other, as an operator's day would: deploy, promote, run an experiment, lose a host,
lose the store, restore it, upgrade, fail an upgrade, roll the release back. Load goes only
to the fleet's own addresses, bounded in count and time. The figures each test measures are
printed (-s)."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from service.store.remote import RemoteStore
from tests.fleet.load import BoundedLoad
from tests.fleet.support import SHARED_FLEET, RunningFleet
from tests.support import IRIS, eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APP_HOSTS = SHARED_FLEET.app_hosts
APP_PORT = 8000
MODELCTL = str(ROOT / ".venv" / "bin" / "modelctl")
DEPLOY_TIMEOUT_S = 900
STORE_PATH = "/srv/model-service/store"
# What a promotion may take to reach every host (the promise).
PROMOTION_BOUND_S = 5.0


def figure(name: str, value: str) -> None:
    print(f"\n[fleet figure] {name}: {value}")


@pytest.fixture(scope="module")
def keys(fleet) -> dict[str, str]:
    return fleet_keys(fleet)


@pytest.fixture(scope="module")
def balancer(fleet) -> str:
    return f"http://{fleet.address('lb')}"


@pytest.fixture(scope="module")
def authoritative(fleet) -> RemoteStore:
    return RemoteStore(
        f"ssh://model-service@{fleet.address('store')}:22{STORE_PATH}",
        key=fleet.directory / "id_ed25519",
        known_hosts=fleet.directory / "known_hosts",
        timeout=30,
    )


def make(
    fleet: RunningFleet, target: str, *extra: str
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [
            "make",
            "-C",
            str(ROOT),
            target,
            f"INVENTORY={fleet.directory / 'inventory.yaml'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT_S,
    )
    return result, time.monotonic() - started


def check_make(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def iris_body() -> dict:
    return {"instances": [[5.1, 3.5, 1.4, 0.2]]}


def iris_load(fleet: RunningFleet, balancer: str, **limits) -> BoundedLoad:
    """Iris predictions through the balancer with the fleet's predict key, until ``limits``
    (max_requests, max_seconds) run out."""
    return BoundedLoad(
        f"{balancer}/v1/models/{IRIS}/predict",
        iris_body(),
        headers=predict_headers(fleet),
        **limits,
    )


def check_every_host_serves(fleet: RunningFleet, balancer: str) -> None:
    """300 predictions through the balancer: none fails, and every app host answers some."""
    with iris_load(fleet, balancer, max_requests=300) as load:
        load.wait_done()
    assert load.failures == []
    assert set(load.served_by) == set(APP_HOSTS)


def host_url(fleet: RunningFleet, host: str) -> str:
    return f"http://{fleet.address(host)}:{APP_PORT}"


# What a host answers (or fails to) while it restarts or its store is away: another try.
TRANSIENT = (requests.RequestException, ValueError, KeyError)


def fleet_keys(fleet: RunningFleet) -> dict[str, str]:
    return yaml.safe_load((fleet.directory / "keys.yaml").read_text())


def predict_headers(fleet: RunningFleet) -> dict[str, str]:
    """Every request but the health checks needs a key on a fleet: the fleet's predict key
    (scopes predict and read)."""
    return {"Authorization": f"Bearer {fleet_keys(fleet)['predict']}"}


def store_env(fleet: RunningFleet) -> dict[str, str]:
    """modelctl's environment for the fleet's store over SSH, with the controller's key."""
    return {
        **os.environ,
        "MODEL_SERVICE_STORE_REMOTE_KEY": str(fleet.directory / "id_ed25519"),
        "MODEL_SERVICE_STORE_REMOTE_KNOWN_HOSTS": str(fleet.directory / "known_hosts"),
    }


def serving_version(fleet: RunningFleet, host: str) -> int:
    answer = requests.post(
        f"{host_url(fleet, host)}/v1/models/{IRIS}/predict",
        json=iris_body(),
        headers=predict_headers(fleet),
        timeout=5,
    )
    answer.raise_for_status()
    return int(answer.json()["version"])


def current_release(fleet: RunningFleet, host: str) -> str:
    return fleet.ssh(host, "readlink -f /opt/model-service/current").stdout.strip()


# -- 1. a fresh deploy ---------------------------------------------------------------------


def test_a_fresh_deploy_serves_from_every_host(fleet, balancer):
    result, seconds = make(fleet, "deploy")
    check_make(result)
    figure("first deploy of 3 app hosts", f"{seconds:.0f} s (make deploy)")
    check_every_host_serves(fleet, balancer)
    for host in APP_HOSTS:
        ready = requests.get(f"{host_url(fleet, host)}/readyz", timeout=5).json()
        assert ready["store_sync"]["reachable"] is True


def test_a_second_deploy_changes_nothing(fleet):
    releases = {host: current_release(fleet, host) for host in APP_HOSTS}
    pids = {host: gunicorn_pids(fleet, host) for host in APP_HOSTS}
    result, seconds = make(fleet, "deploy")
    check_make(result)
    figure("second deploy with nothing changed", f"{seconds:.0f} s")
    recap = [line for line in result.stdout.splitlines() if "changed=" in line]
    assert recap and all("changed=0" in line for line in recap), "\n".join(recap)
    assert {host: current_release(fleet, host) for host in APP_HOSTS} == releases
    assert {host: gunicorn_pids(fleet, host) for host in APP_HOSTS} == pids


# -- 5. a promotion through one host reaches every host --------------------------------------


def test_a_promote_through_one_hosts_admin_api_reaches_every_host(fleet, keys):
    started = time.monotonic()
    answer = requests.post(
        f"{host_url(fleet, 'app2')}/v1/admin/models/{IRIS}/promote",
        json={"version": 2, "reason": "fleet test"},
        headers={"Authorization": f"Bearer {keys['admin']}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    for host in APP_HOSTS:
        eventually(
            lambda h=host: serving_version(fleet, h) == 2,
            30,
            message=f"{host} serving 2",
            ignoring=TRANSIENT,
        )
    seconds = time.monotonic() - started
    figure("promote through app2's admin API to every host", f"{seconds:.2f} s")
    assert seconds < PROMOTION_BOUND_S


# -- an API key made on the store host reaches every host, and so does its revocation ------


def test_a_key_made_in_the_fleets_store_works_on_every_host_and_its_revocation_too(
    fleet, authoritative
):
    store = ["--store", str(authoritative)]
    for host in APP_HOSTS:  # without a key, only the health checks answer
        assert requests.get(f"{host_url(fleet, host)}/v1/models", timeout=5).status_code == 401
    created = subprocess.run([MODELCTL, "keys", "create", "fleet-reader", "--scopes", "read",
                              *store], env=store_env(fleet), capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    started = time.monotonic()

    def status(host: str) -> int:
        return requests.get(
            f"{host_url(fleet, host)}/v1/models",
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        ).status_code

    for host in APP_HOSTS:
        eventually(
            lambda h=host: status(h) == 200,
            30,
            message=f"{host} takes the new key",
            ignoring=TRANSIENT,
        )
    figure("a key created in the fleet's store, accepted on every host",
           f"{time.monotonic() - started:.2f} s")  # fmt: skip
    revoked = subprocess.run(
        [MODELCTL, "keys", "revoke", "fleet-reader", *store],
        env=store_env(fleet),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    for host in APP_HOSTS:
        eventually(
            lambda h=host: status(h) == 401,
            30,
            message=f"{host} refuses the revoked key",
            ignoring=TRANSIENT,
        )
    seconds = time.monotonic() - started
    figure("a key revoked in the fleet's store, refused on every host", f"{seconds:.2f} s")
    assert seconds < PROMOTION_BOUND_S


# -- an experiment started in the fleet's store runs on every host, sticky per client ---------

# Client keys enough that, at 50/50, both variants are met (all alike: 2 in a million).
CLIENT_KEYS = tuple(f"client-{index}" for index in range(24))


def test_an_experiment_started_in_the_fleets_store_runs_on_every_host_sticky_per_client(
    fleet, balancer, authoritative
):
    def modelctl(*args: str) -> str:
        run = subprocess.run([MODELCTL, *args, "--store", str(authoritative)],
                             env=store_env(fleet), capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stderr
        return run.stdout

    places = {host: host_url(fleet, host) for host in APP_HOSTS} | {"balancer": balancer}
    modelctl("promote", IRIS, "1", "--alias", "staging", "--reason", "fleet experiment")
    modelctl("experiment", "start", IRIS, "--variants", "production=50,staging=50",
             "--key-header", "X-Client-ID")  # fmt: skip
    started = time.monotonic()
    try:
        experiment = json.loads(modelctl("experiment", "status", IRIS, "--json"))["experiment"]
        versions = {variant["name"]: variant["version"] for variant in experiment["variants"]}
        assert versions == {"production": 2, "staging": 1}
        for host in APP_HOSTS:
            eventually(
                lambda h=host: (
                    experiment_answer(fleet, places[h], "client-0", versions)[0] == experiment["id"]
                ),
                30,
                message=f"{host} running experiment {experiment['id']}",
                ignoring=TRANSIENT,
            )
        figure("an experiment started in the fleet's store, applied on every host",
               f"{time.monotonic() - started:.2f} s")  # fmt: skip
        assigned = {}
        for client in CLIENT_KEYS:
            answers = {
                place: experiment_answer(fleet, url, client, versions)
                for place, url in places.items()
            }
            assert set(answers.values()) == {(experiment["id"], answers["balancer"][1])}, (
                client,
                answers,
            )
            assigned[client] = answers["balancer"][1]
        figure(
            "client keys per variant", str(sorted(collections.Counter(assigned.values()).items()))
        )
        assert set(assigned.values()) == {"production", "staging"}
    finally:
        modelctl("experiment", "stop", IRIS, "--reason", "fleet experiment done")
    for host in APP_HOSTS:
        eventually(
            lambda h=host: (
                experiment_answer(fleet, places[h], "client-0", versions) == (None, None)
            ),
            30,
            message=f"{host} done with the experiment",
            ignoring=TRANSIENT,
        )


def experiment_answer(
    fleet: RunningFleet, url: str, client: str, versions: dict[str, int]
) -> tuple[str | None, str | None]:
    """(experiment id, variant) of one iris prediction at ``url`` for this client key, or
    (None, None) outside an experiment. The headers and the body must name the same variant,
    and the version that answered must be the one the variant points at."""
    answer = requests.post(
        f"{url}/v1/models/{IRIS}/predict",
        json=iris_body(),
        headers={**predict_headers(fleet), "X-Client-ID": client},
        timeout=5,
    )
    answer.raise_for_status()
    body = answer.json()
    variant = answer.headers.get("X-Model-Variant")
    assert answer.headers["X-Model-Version"] == str(body["version"])
    if "experiment" not in body:
        assert variant is None and "X-Experiment-Id" not in answer.headers, answer.headers
        return None, None
    assert variant == body["experiment"]["variant"], (answer.headers, body)
    assert answer.headers["X-Experiment-Id"] == body["experiment"]["id"]
    assert body["version"] == versions[variant], (variant, body)
    return body["experiment"]["id"], variant


# -- 4. a host's whole Gunicorn killed under load --------------------------------------------


def test_sigkill_of_a_hosts_gunicorn_under_load_fails_no_prediction(fleet, balancer):
    with iris_load(fleet, balancer, max_seconds=300) as load:
        load.wait_for(200)
        victims = gunicorn_pids(fleet, "app1")
        assert victims
        for pid in victims:
            os.kill(pid, 9)
        load.wait_for(600, timeout=90)
        # Restarted by its process manager, and back in the balancer's rotation.
        before = load.served_by["app1"]
        eventually(
            lambda: load.served_by["app1"] > before + 20,
            90,
            message="app1 serving again",
            ignoring=TRANSIENT,
        )
    figure(
        "SIGKILL of app1's Gunicorn (master and workers) under load",
        f"{load.sent} requests, {len(load.failures)} failed",
    )
    assert load.failures == []


# -- 6. the store host down ------------------------------------------------------------------


def test_with_the_store_host_down_serving_goes_on_and_catches_up(fleet, balancer, keys):
    link = store_link(fleet)
    with iris_load(fleet, balancer, max_seconds=300) as load:
        set_link(fleet, link, "down")
        try:
            for host in APP_HOSTS:
                eventually(
                    lambda h=host: not sync_view(fleet, h)["reachable"],
                    30,
                    message=f"{host} notices",
                    ignoring=TRANSIENT,
                )
            scraped = requests.get(
                f"{host_url(fleet, 'app3')}/metrics", headers=predict_headers(fleet), timeout=5
            ).text
            assert "model_service_store_reachable 0.0" in scraped
            refused = requests.post(
                f"{host_url(fleet, 'app1')}/v1/admin/models/{IRIS}/rollback",
                json={},
                headers={"Authorization": f"Bearer {keys['admin']}"},
                timeout=60,
            )
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "store_unreachable"
            load.wait_for(300)
        finally:
            set_link(fleet, link, "up")
            returned = time.monotonic()
        for host in APP_HOSTS:
            eventually(
                lambda h=host: sync_view(fleet, h)["reachable"],
                30,
                message=f"{host} catches up",
                ignoring=TRANSIENT,
            )
        caught_up = time.monotonic() - returned
    figure("store host back: every host in step again", f"{caught_up:.2f} s")
    figure("serving with the store host down", f"{load.sent} requests, {len(load.failures)} failed")
    assert load.failures == []
    started = time.monotonic()
    answer = requests.post(
        f"{host_url(fleet, 'app3')}/v1/admin/models/{IRIS}/rollback",
        json={"reason": "after the store came back"},
        headers={"Authorization": f"Bearer {keys['admin']}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    for host in APP_HOSTS:
        eventually(
            lambda h=host: serving_version(fleet, h) == 1,
            30,
            message=f"{host} serving 1",
            ignoring=TRANSIENT,
        )
    figure(
        "promote (rollback) after the store returned, to every host",
        f"{time.monotonic() - started:.2f} s",
    )
    assert time.monotonic() - started < PROMOTION_BOUND_S


# -- 7. backup, wipe, restore ----------------------------------------------------------------


def test_backup_wipe_restore_gives_the_same_store_and_every_host_serves(
    fleet, balancer, authoritative, tmp_path
):
    env = store_env(fleet)
    url = str(authoritative)
    manifest_before = authoritative.manifest()
    archive = tmp_path / "fleet-backup.tar.gz"
    run = subprocess.run([MODELCTL, "backup", str(archive), "--store", url], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    fleet.ssh("store", f"rm -rf {STORE_PATH}/*")
    assert authoritative.manifest()["models"] == {}
    # An emptied store does not empty the hosts: they keep their verified versions.
    with iris_load(fleet, balancer, max_requests=200) as load:
        load.wait_done()
    assert load.failures == []
    run = subprocess.run([MODELCTL, "restore", str(archive), "--store", url], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert authoritative.manifest() == manifest_before
    for host in APP_HOSTS:
        eventually(
            lambda h=host: sync_view(fleet, h)["reachable"],
            30,
            message=f"{host} in step",
            ignoring=TRANSIENT,
        )
        local = fleet.ssh(host, f"cat /var/lib/model-service/store/{IRIS}/aliases.yaml").stdout
        assert local == manifest_before["models"][IRIS]["aliases"]
    check_every_host_serves(fleet, balancer)


# -- 2. a rolling upgrade under load -----------------------------------------------------------


def test_a_rolling_upgrade_under_load_fails_no_request(fleet, balancer):
    before = {host: current_release(fleet, host) for host in APP_HOSTS}
    with iris_load(fleet, balancer, max_seconds=3000) as load:
        load.wait_for(100)
        result, seconds = make(fleet, "deploy", "RELEASE=upgrade-2")
        load.wait_for(100)
    check_make(result)
    figure("rolling upgrade of 3 app hosts", f"{seconds:.0f} s (make deploy RELEASE=upgrade-2)")
    figure(
        "requests during the upgrade",
        f"{load.sent} sent, {len(load.failures)} failed, {load.reconnects} sent again on a new "
        "connection after a balancer reload closed an idle one",
    )
    assert load.failures == []
    for host in APP_HOSTS:
        assert current_release(fleet, host).endswith("/upgrade-2")
        assert current_release(fleet, host) != before[host]
    assert set(load.served_by) == set(APP_HOSTS)


# -- 3. a host that fails its gate stops the rollout ---------------------------------------------


def test_a_host_failing_its_gate_stops_the_rollout_and_the_release_rolls_back(fleet, balancer):
    # The fleet runs upgrade-2; the deploy is of the checkout's own release (named by its
    # wheels: the first deploy's, already on every host, unless the checkout changed since),
    # so the rollout is what takes the time, not an install. app2 is misconfigured for it (a
    # backend no version of the service has): its Gunicorn cannot start, so app2 fails its
    # gate, given 10 s (app1's gate keeps the default); app1 is upgraded before it, app3
    # never is.
    inventory = fleet.directory / "inventory.yaml"
    good = inventory.read_text()
    first = {host: current_release(fleet, host) for host in APP_HOSTS}
    broken = yaml.safe_load(good)
    app2 = broken["all"]["children"]["app"]["hosts"]["app2"]
    app2.update(service_settings={"backend": "gpu"}, gate_timeout=10)
    inventory.write_text(yaml.safe_dump(broken, sort_keys=False))
    try:
        with iris_load(fleet, balancer, max_seconds=3000) as load:
            load.wait_for(100)
            result, seconds = make(fleet, "deploy")
            load.wait_for(100)
    finally:
        inventory.write_text(good)
    output = result.stdout + result.stderr
    target = built_release()
    assert not first["app1"].endswith(f"/{target}")
    assert result.returncode != 0
    assert f"app2 failed its gate on release {target}" in output
    assert current_release(fleet, "app1").endswith(f"/{target}")
    assert current_release(fleet, "app3") == first["app3"]
    figure(
        "a rollout stopped by app2's gate",
        f"{seconds:.0f} s, {load.sent} requests, {len(load.failures)} failed, "
        f"{load.reconnects} sent again",
    )
    assert load.failures == []
    assert load.served_by["app3"] > 0
    # The fleet back to the release before the stopped one: app1 and app2 go back (app2 with
    # the settings it last passed its gate with), app3 is not touched.
    with iris_load(fleet, balancer, max_seconds=3000) as load:
        load.wait_for(100)
        result, seconds = make(fleet, "rollback-release")
        load.wait_for(100)
    check_make(result)
    figure("rollback-release of 3 app hosts", f"{seconds:.0f} s, {load.sent} requests, "
           f"{len(load.failures)} failed, {load.reconnects} sent again")  # fmt: skip
    assert load.failures == []
    assert {host: current_release(fleet, host) for host in APP_HOSTS} == first
    check_every_host_serves(fleet, balancer)


# -- helpers -------------------------------------------------------------------------------------


def built_release() -> str:
    """The name of the release the last `make deploy` built (build_release.py's release.yaml)."""
    return yaml.safe_load((ROOT / "dist" / "release" / "release.yaml").read_text())["release"]


def gunicorn_pids(fleet: RunningFleet, host: str) -> list[int]:
    """The host's Gunicorn processes (master and workers), found from the controller by the
    host's network namespace: the hosts share one pid namespace, so a pkill inside one
    would reach the others."""
    listing = subprocess.run(
        ["ip", "netns", "pids", f"{fleet.prefix}-{host}"], capture_output=True, text=True
    ).stdout.split()
    pids = []
    for pid in map(int, listing):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"gunicorn" in cmdline:
            pids.append(pid)
    return sorted(pids)


def sync_view(fleet: RunningFleet, host: str) -> dict:
    return requests.get(f"{host_url(fleet, host)}/readyz", timeout=5).json()["store_sync"]


def store_link(fleet: RunningFleet) -> str:
    links = subprocess.run(
        ["ip", "-n", f"{fleet.prefix}-store", "-o", "link", "show"], capture_output=True, text=True
    ).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    return next(name for name in names if name != "lo")


def set_link(fleet: RunningFleet, link: str, state: str) -> None:
    subprocess.run(["ip", "-n", f"{fleet.prefix}-store", "link", "set", link, state], check=True)
