"""The model lifecycle against the real stack (Nginx -> Gunicorn): train from a spec,
publish, serve, train a second version, compare, promote through the gate, roll back."""

from __future__ import annotations

import pytest
import requests
import yaml

from service.cli import main
from tests.support import eventually, require_nginx, running_stack
from tests.test_training import PENGUINS, ROW, changed, write_spec

pytestmark = pytest.mark.integration

NAME = "penguin-species"
SWITCH_DEADLINE_SECONDS = 5.0


def modelctl(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def served_version(session: requests.Session, url: str, ref: str = NAME) -> int:
    response = session.post(f"{url}/v1/models/{ref}/predict", json={"instances": [ROW]}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["version"]


def wait_for_version(session: requests.Session, url: str, expected: int) -> None:
    """Every worker serves ``expected`` within the deadline (several requests, so both
    workers behind Nginx answer)."""
    eventually(
        lambda: all(served_version(session, url) == expected for _ in range(6)),
        SWITCH_DEADLINE_SECONDS,
        message=f"version {expected} served by every worker",
    )


def test_train_publish_serve_compare_promote_rollback(tmp_path, capsys):
    require_nginx()
    store = tmp_path / "model_store"
    good = write_spec(tmp_path / "good", PENGUINS)
    # One split stump cannot tell three species apart: a worse, but still useful, model.
    weak = write_spec(
        tmp_path / "weak",
        changed(PENGUINS, **{"estimator.params": {"n_estimators": 3, "max_depth": 1}}),
    )

    code, out, err = modelctl(capsys, "train", str(good), "--store", str(store))
    assert code == 0, err
    assert f"published {NAME}@1 (staging)" in out
    assert modelctl(capsys, "promote", NAME, "1", "--store", str(store))[0] == 0

    env = {"MODEL_SERVICE_RELOAD_INTERVAL": "0.2"}
    with running_stack(tmp_path, store=store, env=env) as stack, requests.Session() as http:
        assert served_version(http, stack.url) == 1
        card = http.get(f"{stack.url}/v1/models/{NAME}/versions/1/card", timeout=30)
        assert card.status_code == 200
        assert card.headers["Content-Type"].startswith("text/html")
        assert f"{NAME}" in card.text and "<svg" in card.text

        # A second version goes to staging; production keeps serving the first.
        code, out, err = modelctl(capsys, "train", str(weak), "--store", str(store))
        assert code == 0, err
        assert f"published {NAME}@2 (staging)" in out
        eventually(
            lambda: served_version(http, stack.url, f"{NAME}@staging") == 2,
            SWITCH_DEADLINE_SECONDS,
            message="staging moved to version 2",
        )
        assert served_version(http, stack.url) == 1

        code, out, _ = modelctl(capsys, "compare", NAME, "1", "2", "--store", str(store))
        assert code == 0
        assert "f1_macro" in out and "max_depth" in out and "n_estimators" in out
        code, out, _ = modelctl(
            capsys, "compare", NAME, "production", "staging", "--json", "--store", str(store)
        )
        comparison = yaml.safe_load(out)  # JSON is YAML
        assert comparison["a"]["version"] == 1 and comparison["b"]["version"] == 2

        # The gate: version 2 scores worse on the test set, so promote refuses...
        code, _, err = modelctl(capsys, "promote", NAME, "2", "--store", str(store))
        assert code == 1
        assert "worse than" in err and "f1_macro" in err
        assert served_version(http, stack.url) == 1
        # ...unless forced, with a reason kept in the alias history.
        code, out, err = modelctl(
            capsys,
            "promote",
            NAME,
            "2",
            "--force",
            "--reason",
            "smaller model for the edge fleet",
            "--store",
            str(store),
        )
        assert code == 0, err
        wait_for_version(http, stack.url, 2)
        history = yaml.safe_load((store / NAME / "aliases.yaml").read_text())["history"]
        assert history[-1]["forced"] is True
        assert "smaller model for the edge fleet" in history[-1]["reason"]

        # Rollback is instant and ungated.
        assert modelctl(capsys, "rollback", NAME, "--store", str(store))[0] == 0
        wait_for_version(http, stack.url, 1)
