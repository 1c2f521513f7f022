"""Settings: defaults, then an optional YAML file, then environment variables.

Every field can be set with an environment variable ``MODEL_SERVICE_<FIELD>``
(upper case), or in the YAML file named by ``MODEL_SERVICE_CONFIG``. The
environment wins over the file so that one host can override a shared file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "MODEL_SERVICE_"


@dataclasses.dataclass(frozen=True)
class Settings:
    # -- serving -------------------------------------------------------------------
    store: Path = Path("model_store")
    """Where the versioned model store lives: a directory on this host."""
    models: tuple[str, ...] = ()
    """Model names to serve; empty means every model in the store."""
    default_alias: str = "production"
    """The alias a request without "@version" is served from."""
    max_instances: int = 10_000
    """Instances accepted in one prediction request."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body in bytes; Nginx's client_max_body_size matches it."""
    reload_interval: float = 0.5
    """How often each worker looks at the store for alias changes (seconds)."""
    refuse_version_mismatch: bool = False
    """Refuse (instead of warn about) a model pickled by another scikit-learn version."""
    backend: str = "auto"
    """What computes predictions: "auto" serves a model through onnxruntime where its
    metadata records an ONNX form that matched the pickle at publish, else the pickle;
    "sklearn" always serves the pickle (to compare the two, or to rule one out)."""
    default_model: str = ""
    """The model MLflow's POST /invocations serves (name[@version|@alias]); empty: the only
    served model, when exactly one is served."""
    instance_name: str = ""
    """The name answers carry in X-Served-By (which host of a fleet served it); empty: the
    host name."""

    # -- access --------------------------------------------------------------------
    # The API keys themselves are in the store's keys.yaml (`modelctl keys`); these say
    # what this host grants besides them.
    admin_key_hashes: tuple[str, ...] = ()
    """sha256 hex digests of the admin keys; no key configured means no admin access."""
    open_scopes: tuple[str, ...] = ("predict", "read")
    """Scopes any caller has without a key (of predict, read, feedback; admin never): on one
    machine prediction and reading what is served stay open, while feedback, which moves
    live quality, needs a key. `make deploy` sets none open."""
    gate_key_hashes: tuple[str, ...] = ()
    """sha256 hex digests of keys with scopes read and predict given by this host's settings
    rather than the store: `make deploy` writes one per app host for its rollout's gate."""

    # -- signed models (service.store.signing) ---------------------------------------
    trusted_signing_keys: tuple[str, ...] = ()
    """Paths of PEM public keys (EC P-256/384/521): a version is unpickled only when its
    model-signing signature (model.sig) verifies against one of them. Empty: only its
    sha256 is checked, which detects damage but not someone who can write the store."""
    signing_key: str = ""
    """Path of the PEM private key modelctl signs what it publishes with (train, publish,
    train-demo, optimize); empty: versions are published unsigned."""

    # -- a fleet: one authoritative store, mirrored on every host --------------------
    store_remote: str = ""
    """ssh://user@host[:port]/path of the authoritative store; empty: `store` is the only
    store (one machine). When set, `modelctl store-sync` mirrors it into `store`, verifying
    each version before it appears there, and promotions go to it."""
    store_remote_key: str = ""
    """The SSH private key that reaches the store host."""
    store_remote_known_hosts: str = ""
    """The known_hosts file that holds the store host's key, checked strictly: an unknown
    host key is refused."""
    store_sync_interval: float = 1.0
    """Seconds between two looks at the authoritative store; a promotion reaches a host
    within about this plus reload_interval."""
    store_remote_timeout: float = 10.0
    """Seconds one SSH exchange with the store host may take before it counts as
    unreachable."""

    # -- the edge: Nginx in front of Gunicorn (deploy/nginx.conf) --------------------
    # `modelctl serve` renders these into Nginx's configuration; the fleet's balancer takes
    # the same from its inventory variables (balancer_*, deploy/ansible/roles/balancer).
    rate_limit: str = "20000r/s"
    """Requests a second ("NNNr/s") or a minute ("NNNr/m") from one API key (the bearer
    token), or from one client address when a request has none; "off": no limit. Far
    above what one client of a healthy deployment sends (`make bench` peaks near
    4,000 req/s on 2 cores), so it only stops a runaway client."""
    rate_limit_burst: int = 2000
    """Requests above the rate that are still served at once (a burst) before a JSON 429."""
    conn_limit_per_client: int = 512
    """Requests in progress at once from one client address (idle keep-alive connections
    do not count); 0: no limit."""
    admin_networks: tuple[str, ...] = ()
    """Networks (CIDR) that may reach /v1/admin/ besides loopback; others get a JSON 403."""
    tls_certificate: str = ""
    """Path of the PEM certificate (chain) for HTTPS. With it and tls_certificate_key,
    Nginx answers HTTPS on tls_port and redirects plain HTTP there; both empty: plain
    HTTP only."""
    tls_certificate_key: str = ""
    """Path of the PEM private key of tls_certificate."""
    tls_port: int = 8443
    """The port Nginx answers HTTPS on, when tls_certificate is set."""
    hsts_max_age: int = 31_536_000
    """Strict-Transport-Security max-age on HTTPS answers (seconds); 0: no HSTS header."""

    # -- monitoring ----------------------------------------------------------------
    metrics: bool = True
    """Prometheus metrics at GET /metrics."""
    request_log: bool = True
    """The request log: one JSON line per request."""
    state_dir: Path = Path(".monitoring")
    """Shared state of the workers on this host: feedback joins, live quality, drift
    counts."""
    prediction_log: bool = False
    """The prediction log (inputs and outputs, JSON lines): off unless turned on, because
    it holds raw feature values."""
    prediction_log_sample_rate: float = 1.0
    """The share of requests the prediction log records, in (0, 1]."""
    prediction_log_max_bytes: int = 64 * 1024 * 1024
    """The size at which a prediction log file is rotated (bytes)."""
    prediction_log_backups: int = 5
    """Rotated prediction log files kept."""
    prediction_retention: int = 200_000
    """Served predictions kept (label or value only) so feedback can be joined to them."""
    quality_window: int = 1_000
    """Live quality is measured over the last this many predictions that got feedback."""
    quality_tolerance: float = 0.05
    """Live quality is flagged when it falls below the test score in metadata.yaml by more
    than this."""
    drift_window_minutes: int = 60
    """Drift compares live feature values over the last this many minutes against the
    training histograms."""
    drift_threshold: float = 0.2
    """A feature is flagged when its population stability index (PSI) is above this (0.2:
    the usual "significant change" rule of thumb) and its chi-square test agrees
    (drift_alpha)."""
    drift_min_rows: int = 100
    """Values a feature needs in the window before it is judged ("too few rows" until
    then). At 100 rows, PSI from sampling alone averages (bins - 1) / n, 0.09 over the 10
    training bins, under half the threshold (at 50 rows it is 0.18, about the threshold
    itself)."""
    drift_alpha: float = 0.01
    """A feature over the PSI threshold is flagged only when a chi-square test of its bin
    counts against the training shares gives p < drift_alpha / its model's feature count
    (Bonferroni: 1 % chance per look that any feature of a stable model is flagged)."""

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_file = environ.get(ENV_PREFIX + "CONFIG")
        if config_file:
            with open(config_file, encoding="utf-8") as handle:
                values.update(yaml.safe_load(handle) or {})
        for field in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = raw
        values.update(overrides or {})
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        known = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        converted = {name: _convert(known[name], value) for name, value in values.items()}
        settings = cls(**converted)
        settings._check_ranges()
        settings._check_edge()
        return settings

    def _check_ranges(self) -> None:
        for name in (
            "max_instances",
            "max_body_bytes",
            "prediction_log_max_bytes",
            "prediction_retention",
            "quality_window",
            "drift_window_minutes",
            "drift_min_rows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name}: must be at least 1")
        if self.prediction_log_backups < 0:
            raise ValueError("setting prediction_log_backups: must be 0 or more")
        if not 0 < self.prediction_log_sample_rate <= 1:
            raise ValueError("setting prediction_log_sample_rate: must be in (0, 1]")
        for name in ("quality_tolerance", "drift_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"setting {name}: must be 0 or more")
        if not 0 < self.drift_alpha < 1:
            raise ValueError("setting drift_alpha: must be in (0, 1)")
        keyless = set(self.open_scopes) - {"predict", "read", "feedback"}
        if keyless:
            raise ValueError(
                f"setting open_scopes: {', '.join(sorted(keyless))} cannot be open "
                "(choose from predict, read, feedback; admin always needs a key)"
            )
        if self.backend not in ("auto", "sklearn"):
            raise ValueError(f"setting backend: {self.backend!r} is not auto or sklearn")
        for name in ("store_sync_interval", "store_remote_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"setting {name}: must be more than 0 seconds")
        if self.store_remote:
            from service.store.remote import parse_store_url

            try:
                parse_store_url(self.store_remote)
            except ValueError as exc:
                raise ValueError(f"setting store_remote: {exc}") from None
        if self.reload_interval <= 0:
            raise ValueError("setting reload_interval: must be more than 0 seconds")
        if self.default_model:
            # Here, not at the top: service.store's package imports scikit-learn.
            from service.errors import ServiceError
            from service.store.layout import parse_ref

            try:
                parse_ref(self.default_model)
            except ServiceError as exc:
                raise ValueError(f"setting default_model: {exc.message}") from None

    def _check_edge(self) -> None:
        """What Nginx's configuration is rendered from: anything that is not plainly a rate,
        a count, a network or a path is refused before it reaches the file."""
        rate = re.fullmatch(r"[1-9][0-9]{0,8}r/[sm]", self.rate_limit)
        if self.rate_limit != "off" and not rate:
            raise ValueError(
                f"setting rate_limit: {self.rate_limit!r} is not like 20000r/s, 600r/m or off"
            )
        for name in ("rate_limit_burst", "conn_limit_per_client", "hsts_max_age"):
            if getattr(self, name) < 0:
                raise ValueError(f"setting {name}: must be 0 or more")
        for network in self.admin_networks:
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ValueError(f"setting admin_networks: {exc}") from None
        if bool(self.tls_certificate) != bool(self.tls_certificate_key):
            raise ValueError("settings tls_certificate and tls_certificate_key go together")
        for name in ("tls_certificate", "tls_certificate_key"):
            if re.search(r"[\s;{}$\"'\\#]", getattr(self, name)):
                raise ValueError(
                    f"setting {name}: a path without spaces, quotes, ; {{ }} $ # or \\"
                )
        if not 0 < self.tls_port < 65536:
            raise ValueError("setting tls_port: must be a TCP port (1-65535)")


def _convert(field: dataclasses.Field, value: Any) -> Any:
    default = field.default
    try:
        if isinstance(default, bool):
            return _to_bool(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(part.strip() for part in value.split(",") if part.strip())
            return tuple(str(item) for item in value)
        if isinstance(default, Path):
            return Path(value)
        if isinstance(default, int):
            return _to_int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"setting {field.name}: cannot use {value!r}: {exc}") from None


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("expected a whole number")
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        raise ValueError("expected a whole number")
    return int(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected a boolean (true/false)")
