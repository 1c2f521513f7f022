"""The authoritative store on another host, reached over SSH.

A fleet serves from one store: a directory on a store host, written only by
``model-store-serve`` running there as the forced command of every key that
may reach it (``restrict,command="model-store-serve --store PATH"`` in
authorized_keys). So the store host's own locks and atomic renames keep it
consistent whoever writes, and a key can do nothing on that host but the store
operations of :mod:`service.store.serve`. Each request is one ``ssh`` exchange:
the operation and its arguments go as the remote command, bodies (a version, a
backup) as stdin or stdout, and answers and errors as JSON.

Why SSH and not an object store: sshd is on every Linux host already, OpenSSH
checks host keys strictly against a known_hosts file, and the same store code
(locks, renames, the promotion gate) runs on the store host as on one machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from service.errors import (
    PromotionRefused,
    RemoteStoreError,
    ServiceError,
    StoreError,
    StoreUnreachable,
)
from service.store.layout import resolve_ref
from service.store.promotion import GateRefusal

# The first word of every remote command: store-serve refuses anything else.
PROTOCOL = "model-store"
# store-serve's exit status when it answered with a JSON error (anything else non-zero
# is SSH's own failure, or the remote end crashing).
ERROR_EXIT = 3
SSH_BINARY = "ssh"


@dataclasses.dataclass(frozen=True)
class StoreURL:
    user: str
    host: str
    port: int
    path: str

    def __str__(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}{self.path}"


def is_remote(location: str | Path) -> bool:
    return str(location).startswith("ssh://")


def parse_store_url(text: str) -> StoreURL:
    """``ssh://user@host[:port]/absolute/path``: ValueError says what is wrong."""
    parts = urlsplit(text)
    if parts.scheme != "ssh":
        raise ValueError(f"{text!r} is not an ssh:// URL")
    if not parts.username or not parts.hostname:
        raise ValueError(f"{text!r} must name a user and a host: ssh://user@host/path")
    if parts.password:
        raise ValueError("a store URL carries no password: the store host is reached by key")
    try:
        port = parts.port or 22
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise ValueError(f"{text!r} must end in the store's absolute path on its host")
    return StoreURL(parts.username, parts.hostname, port, path)


class RemoteStore:
    """The store operations a host, or ``modelctl``, needs from the authoritative store."""

    def __init__(
        self,
        url: str,
        *,
        key: str | Path | None = None,
        known_hosts: str | Path | None = None,
        timeout: float = 10.0,
        multiplex: bool = False,
        signing_key: str | Path | None = None,
    ):
        self.url = parse_store_url(url)
        # What this client publishes is signed here (the store host holds no private key):
        # see publish and sign.
        self.signing_key = Path(signing_key) if signing_key else None
        self.key = Path(key) if key else None
        self.known_hosts = Path(known_hosts) if known_hosts else None
        self.timeout = timeout
        # A long-lived client (a host's mirror, asking every second) keeps one SSH connection
        # open and runs each request as a new session on it: no key exchange per request.
        self.control_dir = tempfile.mkdtemp(prefix="model-store-ssh-") if multiplex else None

    @classmethod
    def from_settings(
        cls, settings: Any, url: str | None = None, *, multiplex: bool = False, sign: bool = False
    ) -> RemoteStore:
        return cls(
            url or settings.store_remote,
            key=settings.store_remote_key or None,
            known_hosts=settings.store_remote_known_hosts or None,
            timeout=settings.store_remote_timeout,
            multiplex=multiplex,
            signing_key=(settings.signing_key or None) if sign else None,
        )

    def close(self) -> None:
        """End the shared connection, if one was kept (``ssh -O exit``)."""
        if self.control_dir is None:
            return
        subprocess.run(
            [*self.ssh_command(), "-O", "exit"], capture_output=True, timeout=10, check=False
        )
        shutil.rmtree(self.control_dir, ignore_errors=True)
        self.control_dir = None

    def __str__(self) -> str:
        return str(self.url)

    # -- reading ---------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """Every model: its aliases.yaml (text and sha256) and each version's metadata sha256."""
        return self._json("manifest")

    def exists(self) -> bool:
        return True  # an unreachable store raises; a reachable one exists, if empty

    def resolve(self, ref: Any, default_alias: str = "production") -> int:
        return resolve_ref(self, ref, default_alias)

    def names(self) -> list[str]:
        return sorted(self.manifest()["models"])

    def versions(self, name: str) -> list[int]:
        return sorted(int(v) for v in self._model_entry(name)["versions"])

    def alias_state(self, name: str) -> dict[str, Any]:
        return self._json("aliases", name)

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self.alias_state(name)["aliases"])

    def metadata(self, name: str, version: int) -> dict[str, Any]:
        return self._json("metadata", name, str(version))

    def export_version(self, name: str, version: int, destination: Path) -> list[str]:
        """Write one version's files into ``destination`` (an empty directory)."""
        data = self._call(["export", name, str(version)])
        return extract_version_tar(io.BytesIO(data), destination)

    # -- writing ---------------------------------------------------------------

    def promote(
        self, name: str, version: int, alias: str = "production", reason: str = "", *, force=False
    ) -> int | None:
        args = ["promote", name, str(version), "--alias", alias, "--reason", reason]
        answer = self._json(*args, *(["--force"] if force else []))
        return answer["previous"]

    def check_promotion(
        self, name: str, version: int, alias: str = "production"
    ) -> GateRefusal | None:
        answer = self._json("check-promotion", name, str(version), "--alias", alias)
        refusal = answer.get("refusal")
        return None if refusal is None else GateRefusal(refusal["reason"], refusal["details"])

    def rollback(self, name: str, alias: str = "production", reason: str = "") -> tuple[int, int]:
        answer = self._json("rollback", name, "--alias", alias, "--reason", reason)
        return int(answer["from"]), int(answer["to"])

    def publish(
        self,
        name: str,
        artifact_bytes: bytes,
        metadata: dict[str, Any],
        *,
        aliases: tuple[str, ...] = (),
        verify: Any = None,
        extra_files: Mapping[str, bytes] | None = None,
    ) -> int:
        """Publish on the store host, which verifies the version as a local publish does
        (sha256, unpickling and the golden replay) before it appears there; ``verify`` is
        the store host's, so it is not used here.

        With a signing key, the version is then signed here: it is fetched back, checked to
        be exactly what was sent (plus what the store host fills in: version, artifact,
        created_at, environment), signed, and its signature placed. Until then hosts that
        trust keys refuse it, and keep their aliases where they were."""
        import yaml

        body = version_tar(
            {
                "model.pkl": artifact_bytes,
                "metadata.yaml": yaml.safe_dump(metadata, sort_keys=False).encode(),
                **dict(extra_files or {}),
            }
        )
        alias_args = [arg for alias in aliases for arg in ("--alias", alias)]
        version = int(self._json("publish", name, *alias_args, stdin=body)["version"])
        if self.signing_key is not None:
            sent = {"model.pkl": artifact_bytes, **dict(extra_files or {})}
            self._sign(name, version, lambda d: _check_published(d, name, version, sent, metadata))
        return version

    def sign(self, name: str, version: int) -> None:
        """Sign a version of the authoritative store with this client's key (fetched,
        its pickle checked against its sha256, signed here, the signature placed there)."""
        if self.signing_key is None:
            raise StoreError("signing needs a signing key (setting signing_key)")
        self._sign(name, version, lambda d: _check_sha256(d, name, version))

    def _sign(self, name: str, version: int, check: Any) -> None:
        from service.store import signing

        assert self.signing_key is not None
        with tempfile.TemporaryDirectory(prefix="model-sign-") as scratch:
            directory = Path(scratch)
            self.export_version(name, version, directory)
            (directory / signing.SIGNATURE_FILE).unlink(missing_ok=True)
            check(directory)
            data = signing.signature_of(directory, self.signing_key)
        self._json("put-signature", name, str(version), stdin=data)

    # -- experiments (the same operations as ModelStore's) -----------------------

    def experiment_state(self, name: str) -> dict[str, Any]:
        """experiment.yaml as a mapping: ``active`` (or None) and ``history``."""
        return self._json("experiment", name)

    def experiment(self, name: str) -> Any:
        from service.store.experiments import Experiment

        data = self.experiment_state(name)["active"]
        return None if data is None else Experiment.from_dict(name, data)

    def experiment_signature(self, name: str) -> str | None:
        """Changes whenever experiment.yaml does (a digest of its text)."""
        import hashlib

        text = self._model_entry(name).get("experiment")
        return None if text is None else hashlib.sha256(text.encode()).hexdigest()

    def start_experiment(self, name: str, variants: Any, **options: Any) -> Any:
        from service.store.experiment_control import request_body

        body = request_body(list(variants), **options)
        return self._experiment_change("experiment-start", name, body)

    def set_experiment_weights(
        self, name: str, weights: Mapping[str, float], *, reason: str = "", extra=None
    ) -> Any:
        body = {"weights": dict(weights), "reason": reason, "extra": extra}
        return self._experiment_change("experiment-weights", name, body)

    def stop_experiment(
        self, name: str, *, action: str = "stop", reason: str = "", extra=None
    ) -> Any:
        body = {"action": action, "reason": reason, "extra": extra}
        return self._experiment_change("experiment-stop", name, body)

    def note_experiment(self, name: str, action: str, *, reason: str = "", extra=None) -> None:
        body = {"action": action, "reason": reason, "extra": extra}
        self._json("experiment-note", name, stdin=_json_bytes(body))

    def _experiment_change(self, op: str, name: str, body: dict[str, Any]) -> Any:
        from service.store.experiments import Experiment

        answer = self._json(op, name, stdin=_json_bytes(body))
        return Experiment.from_dict(name, answer["experiment"])

    def backup(self, out: IO[bytes]) -> None:
        """Stream a backup archive of the whole store into ``out``."""
        self._call(["backup"], stdout=out, timeout=None)

    def restore(self, archive: IO[bytes]) -> dict[str, Any]:
        return self._json("restore", stdin=archive, timeout=None)

    def keyring(self) -> RemoteKeyRing:
        return RemoteKeyRing(self)

    # -- the exchange ----------------------------------------------------------

    def _model_entry(self, name: str) -> dict[str, Any]:
        from service.errors import ModelNotFound

        models = self.manifest()["models"]
        if name not in models:
            raise ModelNotFound(f"no model named {name!r} in the store", details={"model": name})
        return models[name]

    def _json(self, *args: str, stdin: bytes | IO[bytes] | None = None, timeout=...) -> Any:
        data = self._call(list(args), stdin=stdin, timeout=timeout)
        try:
            return json.loads(data)
        except ValueError:
            raise StoreUnreachable(
                f"the store host {self.url.host} answered {args[0]!r} with no JSON"
            ) from None

    def ssh_command(self) -> list[str]:
        """ssh and its options, up to the destination; the remote command goes after it."""
        options = [
            "-o", "BatchMode=yes",
            # Never trust a host key on first use: the fleet's known_hosts says who the
            # store host is, and anything else is refused.
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=3",
            "-o", "ServerAliveInterval=2",
            "-o", "ServerAliveCountMax=2",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.control_dir:
            # Requests use the shared connection when it is there and connect on their own
            # when it is not; _ensure_master starts it.
            options += ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control_dir}/%C"]
        if self.key:
            options += ["-i", str(self.key), "-o", "IdentitiesOnly=yes"]
        return [SSH_BINARY, *options, "-p", str(self.url.port), f"{self.url.user}@{self.url.host}"]

    def _call(
        self,
        args: list[str],
        *,
        stdin: bytes | IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
        timeout: float | None = ...,  # type: ignore[assignment]
    ) -> bytes:
        remote = shlex.join([PROTOCOL, "--store-path", self.url.path, *args])
        if self.control_dir:
            self._ensure_master()
        command = [*self.ssh_command(), "--", remote]
        timeout = self.timeout if timeout is ... else timeout
        feed = stdin if isinstance(stdin, bytes) else None
        try:
            result = subprocess.run(
                command,
                input=feed,
                stdin=None if feed is not None else (stdin or subprocess.DEVNULL),
                stdout=stdout or subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StoreUnreachable(
                f"the store host {self.url.host} did not answer within {timeout:g}s"
            ) from None
        except OSError as exc:
            raise StoreUnreachable(f"cannot run ssh: {exc.strerror}") from None
        output = result.stdout or b""
        if result.returncode == ERROR_EXIT:
            raise _remote_error(output)
        if result.returncode != 0:
            reason = result.stderr.decode(errors="replace").strip().splitlines()
            raise StoreUnreachable(
                f"the store host {self.url.host}:{self.url.port} cannot be reached: "
                + (reason[-1] if reason else f"ssh exited with {result.returncode}")
            )
        return output

    def _ensure_master(self) -> None:
        """Start the shared connection unless it runs. It goes in the background on its own
        (-f) with no stdio of ours, so no pipe of a request waits for it; it ends 30 s after
        its last request, or at close()."""
        check = [*self.ssh_command(), "-O", "check"]
        if subprocess.run(check, capture_output=True, timeout=5, check=False).returncode == 0:
            return
        options = ["-o", "ControlMaster=yes", "-o", "ControlPersist=30", "-M", "-N", "-f"]
        # On a timeout, the request that follows connects on its own and says what is wrong.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [*self.ssh_command(), *options],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=self.timeout,
                check=False,
            )


class RemoteKeyRing:
    """The authoritative store's API keys, as :class:`service.keys.KeyRing` offers them for a
    local store. A key is made here: only its digest goes to the store host."""

    def __init__(self, remote: RemoteStore):
        self.remote = remote

    def list(self) -> list[Any]:
        from service.keys import ApiKey

        return [
            ApiKey(
                name=entry["name"],
                scopes=frozenset(entry["scopes"]),
                sha256="",  # the store host never sends digests
                created=entry["created"],
                expires=entry["expires"],
            )
            for entry in self.remote._json("keys-list")["keys"]
        ]

    def create(self, name: str, scopes: Any, expires: Any = None) -> str:
        from service.keys import digest, generate_token

        token = generate_token()
        self.add(name, scopes, digest(token), expires)
        return token

    def add(self, name: str, scopes: Any, sha256: str, expires: Any = None) -> bool:
        from service.keys import check_key_name, check_scopes, iso, parse_expiry

        args = [
            "keys-add",
            check_key_name(name),
            "--scopes",
            ",".join(sorted(check_scopes(scopes))),
        ]
        args += ["--sha256", sha256]
        if expires is not None:
            moment = parse_expiry(expires) if isinstance(expires, str) else expires
            args += ["--expires", iso(moment)]
        return bool(self.remote._json(*args)["added"])

    def revoke(self, name: str) -> None:
        self.remote._json("keys-revoke", name)


# What the store host writes into a published version's metadata itself.
HOST_FILLED = frozenset({"schema_version", "name", "version", "created_at", "environment"})


def _check_sha256(directory: Path, name: str, version: int) -> dict[str, Any]:
    import yaml

    from service.store.store import read_verified

    meta = yaml.safe_load((directory / "metadata.yaml").read_text(encoding="utf-8"))
    if meta.get("name") != name or meta.get("version") != version:
        raise StoreError(f"{name}@{version}: the store sent another version's metadata")
    artifact = meta["artifact"]
    where = f"{name}@{version}"
    read_verified(
        directory, artifact["file"], artifact["sha256"], artifact["size"], where=where,
        refusal="not signing it",
    )  # fmt: skip
    return meta


def _check_published(
    directory: Path, name: str, version: int, sent: Mapping[str, bytes], metadata: dict
) -> None:
    """Sign only what this client published: the same files byte for byte, and the same
    metadata but for what the store host fills in."""
    meta = _check_sha256(directory, name, version)
    where = f"{name}@{version}"
    held = {p.name for p in directory.iterdir()} - {"metadata.yaml"}
    if held != set(sent) or any((directory / f).read_bytes() != sent[f] for f in sent):
        raise StoreError(f"{where}: the store holds other files than were published; not signed")
    import yaml

    # As the store host read it: through YAML.
    ours = yaml.safe_load(
        yaml.safe_dump({k: v for k, v in metadata.items() if k not in {"version", "artifact"}})
    )
    changed = sorted(
        key
        for key in set(meta) | set(ours)
        if key != "artifact"
        and meta.get(key) != ours.get(key)
        and not (key in HOST_FILLED and key not in ours)
    )
    if changed:
        raise StoreError(
            f"{where}: the store's metadata differs from what was published in "
            f"{', '.join(changed)}; not signed"
        )


def _json_bytes(body: Any) -> bytes:
    """A request body; numbers a program computed with NumPy go as the plain numbers."""
    return json.dumps(body, default=lambda o: o.item() if hasattr(o, "item") else str(o)).encode()


def _remote_error(output: bytes) -> ServiceError:
    try:
        error = json.loads(output)["error"]
        status, code, message = int(error["status"]), str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return StoreError("the store host failed and gave no reason")
    details = error.get("details")
    if code == PromotionRefused.code:
        return PromotionRefused(str(error.get("reason", message)), details)
    return RemoteStoreError(status, code, message, details)


# -- one version as a tar stream -----------------------------------------------------

# A version's files are small in number and each is checked against its metadata before
# use; the limits only stop a broken or hostile stream from filling a disk.
MAX_VERSION_FILES = 64
MAX_VERSION_BYTES = 4 * 1024**3


def version_tar(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def extract_version_tar(stream: IO[bytes], destination: Path) -> list[str]:
    """The plain files of a version's tar into ``destination``; anything else is refused."""
    from service.store.store import FILE_NAME_PATTERN

    names: list[str] = []
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or not FILE_NAME_PATTERN.fullmatch(member.name):
                    raise StoreError(f"a version holds only plain files, not {member.name!r}")
                total += member.size
                if len(names) >= MAX_VERSION_FILES or total > MAX_VERSION_BYTES:
                    raise StoreError("a version's transfer is larger than any version can be")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has contents
                with open(destination / member.name, "wb") as target:
                    while chunk := source.read(1 << 20):
                        target.write(chunk)
                names.append(member.name)
    except tarfile.TarError as exc:
        raise StoreError(f"a version's transfer is not a valid tar stream: {exc}") from None
    return names
