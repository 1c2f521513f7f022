"""Settings: defaults, then the YAML file named by MODEL_SERVICE_CONFIG, then environment
variables, then explicit overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from service.config import Settings


def config_file(tmp_path: Path, values: dict) -> dict[str, str]:
    """An environment naming a YAML config file with these values."""
    path = tmp_path / "model-service.yaml"
    path.write_text(yaml.safe_dump(values))
    return {"MODEL_SERVICE_CONFIG": str(path)}


def test_defaults():
    settings = Settings.load(environ={})
    assert settings == Settings()
    assert settings.store == Path("model_store")
    assert settings.models == ()
    assert settings.default_alias == "production"
    assert settings.max_instances == 10_000
    assert settings.max_body_bytes == 16 * 1024 * 1024
    assert settings.reload_interval == 0.5
    assert settings.refuse_version_mismatch is False
    assert settings.admin_key_hashes == ()


def test_environment_variables_override_defaults():
    settings = Settings.load(
        environ={
            "MODEL_SERVICE_STORE": "/srv/models",
            "MODEL_SERVICE_MODELS": "iris-classifier",
            "MODEL_SERVICE_DEFAULT_ALIAS": "staging",
            "MODEL_SERVICE_MAX_INSTANCES": "50",
            "MODEL_SERVICE_RELOAD_INTERVAL": "2.5",
            "MODEL_SERVICE_REFUSE_VERSION_MISMATCH": "true",
            "PATH": "/usr/bin",  # not ours: ignored
            "STORE": "/elsewhere",
        }
    )
    assert settings.store == Path("/srv/models")
    assert settings.models == ("iris-classifier",)
    assert settings.default_alias == "staging"
    assert settings.max_instances == 50 and type(settings.max_instances) is int
    assert settings.reload_interval == 2.5 and type(settings.reload_interval) is float
    assert settings.refuse_version_mismatch is True
    # Everything not named keeps its default.
    assert settings.max_body_bytes == Settings().max_body_bytes


def test_yaml_file_named_by_environment(tmp_path):
    environ = config_file(
        tmp_path,
        {
            "store": str(tmp_path / "store"),
            "models": ["iris-classifier", "diabetes-regressor"],
            "max_instances": 25,
            "refuse_version_mismatch": True,
        },
    )
    settings = Settings.load(environ=environ)
    assert settings.store == tmp_path / "store"
    assert settings.models == ("iris-classifier", "diabetes-regressor")
    assert settings.max_instances == 25
    assert settings.refuse_version_mismatch is True
    assert settings.default_alias == "production"


def test_empty_yaml_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert Settings.load(environ={"MODEL_SERVICE_CONFIG": str(path)}) == Settings()


def test_environment_beats_file_and_overrides_beat_environment(tmp_path):
    environ = config_file(tmp_path, {"max_instances": 25, "default_alias": "file", "models": "a"})
    environ |= {"MODEL_SERVICE_MAX_INSTANCES": "50", "MODEL_SERVICE_DEFAULT_ALIAS": "env"}

    from_env = Settings.load(environ=environ)
    assert (from_env.max_instances, from_env.default_alias, from_env.models) == (50, "env", ("a",))

    overridden = Settings.load({"max_instances": 75}, environ=environ)
    assert (overridden.max_instances, overridden.default_alias) == (75, "env")


def test_load_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("MODEL_SERVICE_MAX_INSTANCES", "33")
    monkeypatch.delenv("MODEL_SERVICE_CONFIG", raising=False)
    assert Settings.load().max_instances == 33


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("True", True),
        (" YES ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_booleans_from_environment(raw, expected):
    settings = Settings.load(environ={"MODEL_SERVICE_REFUSE_VERSION_MISMATCH": raw})
    assert settings.refuse_version_mismatch is expected


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), (1, True), (0, False)]
)
def test_booleans_from_yaml(tmp_path, value, expected):
    environ = config_file(tmp_path, {"refuse_version_mismatch": value})
    assert Settings.load(environ=environ).refuse_version_mismatch is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("abc123", ("abc123",)),
        ("abc123,def456", ("abc123", "def456")),
        (" abc123 , def456 ,, ", ("abc123", "def456")),
        ("", ()),
    ],
)
def test_tuples_from_comma_lists(raw, expected):
    settings = Settings.load(environ={"MODEL_SERVICE_ADMIN_KEY_HASHES": raw})
    assert settings.admin_key_hashes == expected


def test_tuples_from_sequences():
    assert Settings.from_mapping({"models": ["a", "b"]}).models == ("a", "b")
    assert Settings.from_mapping({"models": ("a",)}).models == ("a",)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"colour": "blue"}, "unknown setting(s): colour"),
        ({"max_instance": 5, "stores": "x"}, "unknown setting(s): max_instance, stores"),
    ],
)
def test_unknown_settings_are_refused(tmp_path, values, message):
    with pytest.raises(ValueError) as from_overrides:
        Settings.load(values, environ={})
    assert str(from_overrides.value) == message
    with pytest.raises(ValueError) as from_file:
        Settings.load(environ=config_file(tmp_path, values))
    assert str(from_file.value) == message


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        (
            "MAX_INSTANCES",
            "many",
            "setting max_instances: cannot use 'many': expected a whole number",
        ),
        ("MAX_BODY_BYTES", "16M", "setting max_body_bytes: cannot use '16M'"),
        (
            "RELOAD_INTERVAL",
            "soon",
            "setting reload_interval: cannot use 'soon': could not convert string to float",
        ),
        (
            "REFUSE_VERSION_MISMATCH",
            "maybe",
            "setting refuse_version_mismatch: cannot use 'maybe': expected a boolean (true/false)",
        ),
        ("REFUSE_VERSION_MISMATCH", "2", "setting refuse_version_mismatch: cannot use '2'"),
    ],
)
def test_bad_values_name_the_field(variable, raw, message):
    with pytest.raises(ValueError) as caught:
        Settings.load(environ={f"MODEL_SERVICE_{variable}": raw})
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_instances": None}, "setting max_instances: cannot use None"),
        ({"models": None}, "setting models: cannot use None"),
        ({"store": None}, "setting store: cannot use None"),
        ({"reload_interval": [1]}, "setting reload_interval: cannot use [1]"),
    ],
)
def test_bad_values_from_yaml_name_the_field(tmp_path, values, message):
    with pytest.raises(ValueError) as caught:
        Settings.load(environ=config_file(tmp_path, values))
    assert str(caught.value).startswith(message)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Settings.load(environ={"MODEL_SERVICE_CONFIG": str(tmp_path / "absent.yaml")})


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_instances = 1  # type: ignore[misc]


@pytest.mark.parametrize("value", [10.5, True], ids=["fraction", "boolean"])
def test_integer_settings_refuse_other_numbers(tmp_path, value):
    with pytest.raises(ValueError, match="setting max_instances: cannot use"):
        Settings.load(environ=config_file(tmp_path, {"max_instances": value}))


def test_drift_settings_from_environment():
    defaults = Settings()
    assert (defaults.drift_threshold, defaults.drift_alpha, defaults.drift_min_rows) == (
        0.2,
        0.01,
        100,
    )
    settings = Settings.load(
        environ={
            "MODEL_SERVICE_DRIFT_THRESHOLD": "0.25",
            "MODEL_SERVICE_DRIFT_ALPHA": "0.001",
            "MODEL_SERVICE_DRIFT_MIN_ROWS": "500",
        }
    )
    assert (settings.drift_threshold, settings.drift_alpha, settings.drift_min_rows) == (
        0.25,
        0.001,
        500,
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"drift_min_rows": 0}, "setting drift_min_rows: must be at least 1"),
        ({"drift_alpha": 0}, "setting drift_alpha: must be in (0, 1)"),
        ({"drift_alpha": 1}, "setting drift_alpha: must be in (0, 1)"),
        ({"drift_threshold": -0.1}, "setting drift_threshold: must be 0 or more"),
    ],
)
def test_drift_settings_out_of_range_are_refused(values, message):
    with pytest.raises(ValueError) as caught:
        Settings.from_mapping(values)
    assert str(caught.value) == message
