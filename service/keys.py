"""API keys: who may call which part of the service.

A key is a random token (``msk_`` and 43 URL-safe characters: 256 bits) handed out once.
The service keeps only its sha256 digest, with a name, the scopes it grants, when it was
created and when it expires, in ``keys.yaml`` at the root of the model store. So the
fleet's authoritative store holds the keys of the whole fleet and each host's mirror copies
them with the models; every worker reads the file again when it changes.

Scopes:

- ``predict``: the prediction routes (native, MLflow, Open Inference Protocol, gRPC);
- ``feedback``: labels for served predictions (they move live quality);
- ``read``: what is served and how it does (model metadata, cards, status, metrics, drift,
  the OpenAPI document);
- ``admin``: promote, roll back, reload.

Nothing here knows HTTP: the web layer and the gRPC server ask :class:`KeyVerifier`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from service.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from service.files import write_atomic

log = logging.getLogger(__name__)

SCOPES = ("predict", "feedback", "read", "admin")
KEYS_FILE = "keys.yaml"
LOCK_FILE = ".keys.lock"
TOKEN_PREFIX = "msk_"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
DURATION_PATTERN = re.compile(r"([1-9][0-9]{0,5})([dh])")
# A worker looks at the key file at most this often (seconds): a new or revoked key takes
# effect within about this long, at the cost of one stat() a second.
CHECK_INTERVAL = 1.0
# A key's last use is written at most this often per key and process (seconds).
USAGE_INTERVAL = 60.0
USAGE_DIR = "key-usage"


class KeyNotFound(NotFound):
    code = "key_not_found"


class KeyExists(Conflict):
    code = "key_exists"


def digest(token: str) -> str:
    """The sha256 hex digest the key file keeps of a key."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_expiry(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``2027-01-01`` (the start of that day, UTC), an ISO-8601 time, or a duration from
    now: ``30d``, ``12h``."""
    now = now or now_utc()
    text = str(text).strip()
    duration = DURATION_PATTERN.fullmatch(text)
    if duration:
        amount, unit = int(duration.group(1)), duration.group(2)
        return now + (dt.timedelta(days=amount) if unit == "d" else dt.timedelta(hours=amount))
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"expiry {text!r} is not a date (2027-01-01), an ISO time or a duration (30d, 12h)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    if moment <= now:
        raise BadRequest(f"expiry {text!r} is in the past")
    return moment


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(s.strip() for s in scopes if s and s.strip())
    unknown = sorted(chosen - set(SCOPES))
    if unknown or not chosen:
        raise BadRequest(
            f"scopes must be some of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return chosen


def check_key_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise BadRequest(
            f"key name {name!r}: lowercase letters, digits, '-' and '_', at most 64 characters"
        )
    return name


@dataclasses.dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]
    sha256: str
    created: str
    expires: str | None = None

    def expired(self, now: dt.datetime | None = None) -> bool:
        if self.expires is None:
            return False
        return (now or now_utc()) >= dt.datetime.fromisoformat(self.expires.replace("Z", "+00:00"))

    def describe(self) -> dict[str, Any]:
        """What may be shown: everything but the digest."""
        return {
            "name": self.name,
            "scopes": [s for s in SCOPES if s in self.scopes],
            "created": self.created,
            "expires": self.expires,
        }

    def to_entry(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "scopes": [s for s in SCOPES if s in self.scopes],
            "created": self.created,
            "expires": self.expires,
        }


def parse_keys(text: str | None) -> dict[str, ApiKey]:
    """The keys of a key file's text; ValueError says what is wrong with it, without quoting
    the file (PyYAML's own message shows the offending line, which may hold a digest)."""
    try:
        data = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"not valid YAML{where}: {problem}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if entries is None:
        entries = {}
    if not isinstance(entries, dict):
        raise ValueError("'keys' is not a mapping of names to keys")
    keys = {}
    for name, entry in entries.items():
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{name!r} is not a key name")
        if not isinstance(entry, dict) or not DIGEST_PATTERN.fullmatch(str(entry.get("sha256"))):
            raise ValueError(f"key {name}: no sha256 digest")
        scopes = frozenset(entry.get("scopes") or ())
        if not scopes <= set(SCOPES):
            raise ValueError(f"key {name}: unknown scopes {sorted(scopes - set(SCOPES))}")
        expires = entry.get("expires")
        keys[name] = ApiKey(
            name=name,
            scopes=scopes,
            sha256=str(entry["sha256"]),
            created=str(entry.get("created") or ""),
            expires=None if expires is None else str(expires),
        )
    return keys


def render_keys(keys: dict[str, ApiKey]) -> str:
    body = {"keys": {name: keys[name].to_entry() for name in sorted(keys)}}
    return (
        "# API keys (modelctl keys): sha256 digests only; the keys themselves were shown once.\n"
        + yaml.safe_dump(body, sort_keys=False)
    )


class KeyRing:
    """The key file of a store: create, list and revoke keys. Writes hold a lock and go
    through a temporary file and os.replace, so a worker never reads half a file."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.path = self.root / KEYS_FILE

    def list(self) -> list[ApiKey]:
        return sorted(self._read().values(), key=lambda key: key.name)

    def create(
        self, name: str, scopes: Iterable[str], expires: str | dt.datetime | None = None
    ) -> str:
        """A new key named ``name``; returns the key itself, which is kept nowhere."""
        token = generate_token()
        self.add(name, scopes, digest(token), expires)
        return token

    def add(
        self,
        name: str,
        scopes: Iterable[str],
        sha256: str,
        expires: str | dt.datetime | None = None,
    ) -> bool:
        """Record a key by its digest (the key made elsewhere). Adding the same key again
        changes nothing and returns False; another key under a taken name is refused."""
        check_key_name(name)
        chosen = check_scopes(scopes)
        if not DIGEST_PATTERN.fullmatch(sha256 or ""):
            raise BadRequest("sha256 must be 64 lowercase hex digits")
        if isinstance(expires, str):
            expires = parse_expiry(expires)
        with self._locked():
            keys = self._read()
            existing = keys.get(name)
            if existing is not None:
                same = (
                    hmac.compare_digest(existing.sha256, sha256)
                    and existing.scopes == chosen
                    and existing.expires == (iso(expires) if expires else None)
                )
                if same:
                    return False
                raise KeyExists(f"a key named {name!r} exists; revoke it first")
            keys[name] = ApiKey(
                name=name,
                scopes=chosen,
                sha256=sha256,
                created=iso(now_utc()),
                expires=iso(expires) if expires else None,
            )
            self._write(keys)
        return True

    def revoke(self, name: str) -> None:
        with self._locked():
            keys = self._read()
            if name not in keys:
                raise KeyNotFound(f"no key named {name!r}")
            del keys[name]
            self._write(keys)

    def _read(self) -> dict[str, ApiKey]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            return parse_keys(text)
        except ValueError as exc:
            raise BadRequest(f"the key file {self.path} cannot be read: {exc}") from None

    def _write(self, keys: dict[str, ApiKey]) -> None:

        write_atomic(self.path, render_keys(keys))

    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        return _FileLock(self.root / LOCK_FILE)


class _FileLock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self.handle = open(self.path, "a+")  # closed in __exit__
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


class KeyVerifier:
    """One process's view of the keys: the store's key file, read again when it changes
    (looked at no more than once per ``check_interval``), and keys given by the settings
    (``admin_key_hashes``). Never logs a key or its digest."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        extra: Iterable[ApiKey] = (),
        usage: KeyUsage | None = None,
        check_interval: float = CHECK_INTERVAL,
    ):
        self.path = Path(root) / KEYS_FILE
        self.extra = tuple(extra)
        self.usage = usage
        self.check_interval = check_interval
        self._keys: tuple[ApiKey, ...] = ()
        self._signature: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def known(self) -> tuple[ApiKey, ...]:
        if time.monotonic() - self._checked >= self.check_interval:
            self._refresh()
        return self._keys + self.extra

    def authenticate(self, token: str) -> ApiKey:
        """The key ``token`` is, or Unauthorized."""
        presented = digest(token)
        found = None
        # Every key is compared, in constant time each: the time taken says nothing of
        # which digest came close.
        for key in self.known():
            if hmac.compare_digest(presented, key.sha256):
                found = key
        if found is None:
            raise Unauthorized("the key is not valid")
        if found.expired():
            raise Unauthorized(f"the key {found.name!r} expired at {found.expires}")
        if self.usage is not None:
            self.usage.note(found.name)
        return found

    def authorize(self, token: str | None, scope: str) -> ApiKey:
        """The key ``token`` is, when it grants ``scope``; else Unauthorized (no key, not a
        valid one) or Forbidden (a valid key without that scope)."""
        if not token:
            raise Unauthorized(
                f"this route needs a key with scope {scope!r}, sent as "
                "'Authorization: Bearer <key>'",
                details={"scope": scope},
            )
        key = self.authenticate(token)
        if scope not in key.scopes:
            raise Forbidden(
                f"the key {key.name!r} does not grant scope {scope!r}",
                details={"scope": scope},
            )
        return key

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._checked < self.check_interval:
                return
            try:
                stat = self.path.stat()
                signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            except FileNotFoundError:
                signature = None
            if signature != self._signature:
                self._keys = self._load() if signature is not None else ()
                self._signature = signature
            self._checked = time.monotonic()

    def _load(self) -> tuple[ApiKey, ...]:
        try:
            return tuple(parse_keys(self.path.read_text(encoding="utf-8")).values())
        except (OSError, ValueError) as exc:
            # Keep the keys read before: a broken file must not open or close everything.
            log.error(
                "the key file %s cannot be read (%s); keeping the keys read before", self.path, exc
            )
            return self._keys


def settings_keys(
    admin_key_hashes: Iterable[str], gate_key_hashes: Iterable[str] = ()
) -> list[ApiKey]:
    """The keys the settings name by digest: ``admin_key_hashes`` (scope admin) and
    ``gate_key_hashes`` (scopes read and predict, for a host's rollout gate)."""
    given = [("admin_key_hashes", h, {"admin"}) for h in admin_key_hashes]
    given += [("gate_key_hashes", h, {"read", "predict"}) for h in gate_key_hashes]
    return [
        ApiKey(
            name=f"settings:{setting}",
            scopes=frozenset(scopes),
            sha256=h.strip().lower(),
            created="",
        )
        for setting, h, scopes in given
    ]


def verifier_for(settings: Any) -> KeyVerifier:
    """A process's verifier as its settings say: the store's key file, the keys the settings
    give by digest, and last use recorded in the monitoring state directory."""
    return KeyVerifier(
        settings.store,
        extra=settings_keys(settings.admin_key_hashes, settings.gate_key_hashes),
        usage=KeyUsage(settings.state_dir),
    )


class KeyUsage:
    """When each key was last used on this host: one empty file per key under the
    monitoring state directory, its mtime the time. A process writes a key's file at most
    once per ``interval``, so a busy key costs a utime() a minute, not one per request."""

    def __init__(self, state_dir: str | os.PathLike[str], interval: float = USAGE_INTERVAL):
        self.directory = Path(state_dir) / USAGE_DIR
        self.interval = interval
        self._written: dict[str, float] = {}

    def note(self, name: str) -> None:
        now = time.time()
        if now - self._written.get(name, float("-inf")) < self.interval:
            return
        self._written[name] = now
        if not NAME_PATTERN.fullmatch(name):
            return  # a settings key: it has no entry in the key file to show a time for
        path = self.directory / name
        try:
            try:
                os.utime(path, (now, now))
            except FileNotFoundError:
                self.directory.mkdir(parents=True, exist_ok=True)
                path.touch()
        except OSError as exc:
            log.warning("cannot record the use of key %s: %s", name, exc.strerror)

    def last_used(self) -> dict[str, float]:
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return {}
        return {path.name: path.stat().st_mtime for path in entries if path.is_file()}
