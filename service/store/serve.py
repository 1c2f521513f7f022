"""The store host's side of :mod:`service.store.remote`: what ``model-store-serve``
(:mod:`service.store_host`) answers.

It runs as the forced command of every key allowed to reach the store
(``restrict,command="model-store-serve --store PATH"`` in authorized_keys),
so the command a client asked for arrives in ``SSH_ORIGINAL_COMMAND`` and is
parsed here, never handed to a shell: a key can run these operations on this
store and nothing else. Answers are JSON on stdout; an error is JSON too, with
the HTTP status it maps to, and exit status ``ERROR_EXIT``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from service.errors import BadRequest, PromotionRefused, ServiceError, StoreError
from service.store import archive, experiment_control
from service.store.experiments import EXPERIMENT_FILE
from service.store.layout import METADATA_FILE, check_alias, check_name, check_version
from service.store.remote import ERROR_EXIT, PROTOCOL, extract_version_tar, version_tar
from service.store.signing import MAX_SIGNATURE_BYTES, SIGNATURE_FILE
from service.store.store import ARTIFACT_FILE, ModelStore, StoredArtifact

log = logging.getLogger(__name__)

Verify = Callable[[StoredArtifact], Any]

EXPERIMENT_OPS = (
    "experiment",
    "experiment-start",
    "experiment-weights",
    "experiment-stop",
    "experiment-note",
)
# A start, weights, stop or note request's JSON body (a canary's numbers included).
MAX_EXPERIMENT_REQUEST_BYTES = 256 * 1024
_NOTE_FIELDS = frozenset({"action", "reason", "extra"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit 2
        raise BadRequest(f"store request not understood: {message}", code="bad_store_request")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROTOCOL, add_help=False)
    parser.add_argument("--store-path", required=True)
    ops = parser.add_subparsers(dest="op", required=True, parser_class=_Parser)
    ops.add_parser("manifest", add_help=False)
    ops.add_parser("backup", add_help=False)
    ops.add_parser("restore", add_help=False)
    ops.add_parser("aliases", add_help=False).add_argument("name")
    for op in ("metadata", "export", "put-signature"):
        sub = ops.add_parser(op, add_help=False)
        sub.add_argument("name")
        sub.add_argument("version")
    for op in ("promote", "check-promotion"):
        sub = ops.add_parser(op, add_help=False)
        sub.add_argument("name")
        sub.add_argument("version")
        sub.add_argument("--alias", default="production")
        if op == "promote":
            sub.add_argument("--reason", default="")
            sub.add_argument("--force", action="store_true")
    sub = ops.add_parser("rollback", add_help=False)
    sub.add_argument("name")
    sub.add_argument("--alias", default="production")
    sub.add_argument("--reason", default="")
    sub = ops.add_parser("publish", add_help=False)
    sub.add_argument("name")
    sub.add_argument("--alias", action="append", default=[])
    # API keys (service.keys): only digests cross, the keys are made by the client.
    ops.add_parser("keys-list", add_help=False)
    sub = ops.add_parser("keys-add", add_help=False)
    sub.add_argument("name")
    sub.add_argument("--scopes", required=True)
    sub.add_argument("--sha256", required=True)
    sub.add_argument("--expires")
    ops.add_parser("keys-revoke", add_help=False).add_argument("name")
    # Experiments (service.store.experiments): the state, and its changes with a JSON body
    # on stdin (service.store.experiment_control reads it as the admin API's).
    for op in EXPERIMENT_OPS:
        ops.add_parser(op, add_help=False).add_argument("name")
    return parser


def serve(
    store_root: Path,
    command: str,
    stdin: IO[bytes],
    stdout: IO[bytes],
    verify: Verify | None = None,
) -> int:
    """Carry out one request; return the process's exit status."""
    try:
        words = shlex.split(command or "")
        if not words or words[0] != PROTOCOL:
            raise BadRequest(
                f"this key may only run store requests ({PROTOCOL} …)", code="bad_store_request"
            )
        args = _parser().parse_args(words[1:])
        store = ModelStore(store_root)
        if Path(args.store_path).resolve() != store.root:
            raise BadRequest(
                f"this host serves the store at {store.root}, not {args.store_path}",
                code="wrong_store_path",
            )
        answer = _carry_out(store, args, stdin, stdout, verify)
    except ServiceError as exc:
        _write_json(stdout, {"error": _error_body(exc)})
        return ERROR_EXIT
    except Exception as exc:  # the client gets a reason; the log gets the traceback
        log.exception("store request failed")
        _write_json(stdout, {"error": {"status": 500, "code": "store_error", "message": str(exc)}})
        return ERROR_EXIT
    if answer is not None:
        _write_json(stdout, answer)
    return 0


def _carry_out(
    store: ModelStore, args: argparse.Namespace, stdin: IO[bytes], stdout: IO[bytes], verify
) -> Any:
    op = args.op
    if op == "manifest":
        return manifest(store)
    if op == "aliases":
        return store.alias_state(check_name(args.name))
    if op == "metadata":
        return store.metadata(check_name(args.name), check_version(args.version))
    if op == "export":
        stdout.write(export_version(store, check_name(args.name), check_version(args.version)))
        return None
    if op == "put-signature":
        data = stdin.read(MAX_SIGNATURE_BYTES + 1)
        store.put_signature(check_name(args.name), check_version(args.version), data)
        return {"signed": f"{args.name}@{args.version}"}
    if op == "check-promotion":
        refusal = store.check_promotion(args.name, check_version(args.version), args.alias)
        return {"refusal": None if refusal is None else vars(refusal)}
    if op == "promote":
        version = check_version(args.version)
        previous = store.promote(
            check_name(args.name), version, check_alias(args.alias), args.reason, force=args.force
        )
        return {"previous": previous}
    if op == "rollback":
        before, after = store.rollback(check_name(args.name), check_alias(args.alias), args.reason)
        return {"from": before, "to": after}
    if op == "publish":
        return {"version": _publish(store, check_name(args.name), args.alias, stdin, verify)}
    if op.startswith("keys-"):
        return _keys(store, args)
    if op in EXPERIMENT_OPS:
        return _experiment(store, op, check_name(args.name), stdin)
    if op == "backup":
        archive.write_backup(store, stdout)
        return None
    if op == "restore":
        return archive.restore(store, stdin)
    raise BadRequest(f"unknown store request {op!r}")  # the parser allows no other


def _keys(store: ModelStore, args: argparse.Namespace) -> dict[str, Any]:
    from service.keys import KeyRing

    ring = KeyRing(store.root)
    if args.op == "keys-list":
        return {"keys": [key.describe() for key in ring.list()]}
    if args.op == "keys-add":
        added = ring.add(args.name, args.scopes.split(","), args.sha256, args.expires)
        return {"added": added}
    ring.revoke(args.name)
    return {"revoked": args.name}


def _experiment(store: ModelStore, op: str, name: str, stdin: IO[bytes]) -> dict[str, Any]:
    if op == "experiment":
        return store.experiment_state(name)
    data = stdin.read(MAX_EXPERIMENT_REQUEST_BYTES + 1)
    if len(data) > MAX_EXPERIMENT_REQUEST_BYTES:
        raise BadRequest("an experiment request is larger than any needs to be")
    try:
        body = json.loads(data) if data.strip() else {}
    except ValueError:
        raise BadRequest("an experiment request's body is not JSON") from None
    if op == "experiment-start":
        variants, options = experiment_control.start_arguments(
            body, fields=experiment_control.PROTOCOL_START_FIELDS
        )
        experiment = store.start_experiment(name, variants, **options)
    elif op == "experiment-weights":
        weights, options = experiment_control.weights_arguments(body)
        experiment = store.set_experiment_weights(name, weights, **options)
    elif op == "experiment-stop":
        experiment = store.stop_experiment(
            name, **experiment_control.stop_arguments(body, fields=_NOTE_FIELDS)
        )
    else:
        arguments = experiment_control.stop_arguments(body, fields=_NOTE_FIELDS)
        if "action" not in arguments:
            raise BadRequest("a note needs an action")
        store.note_experiment(name, arguments.pop("action"), **arguments)
        return {"noted": name}
    return {"experiment": experiment.to_dict()}


def manifest(store: ModelStore) -> dict[str, Any]:
    """What a mirror needs to know what changed: each model's aliases.yaml and
    experiment.yaml (their text, None for none), a digest of each version's metadata.yaml
    (which records the digest of every other file), and of its signature where it has one
    (a version may be signed after it was published)."""
    models: dict[str, Any] = {}
    for name in store.names() if store.exists() else []:
        aliases_path = store.layout.aliases_file(name)
        try:
            text = aliases_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = None
        versions, signatures = {}, {}
        for version in store.versions(name):
            try:
                data = store.layout.metadata_file(name, version).read_bytes()
            except FileNotFoundError:
                continue
            versions[str(version)] = hashlib.sha256(data).hexdigest()
            signature = store.layout.version_dir(name, version) / SIGNATURE_FILE
            if signature.is_file():
                signatures[str(version)] = hashlib.sha256(signature.read_bytes()).hexdigest()
        models[name] = {
            "aliases": text,
            "versions": versions,
            "signatures": signatures,
            "experiment": _text_of(store.layout.model_dir(name) / EXPERIMENT_FILE),
        }
    # The key file (digests of the API keys), which every host copies as it is.
    return {"models": models, "keys": _keys_text(store)}


def _keys_text(store: ModelStore) -> str | None:
    from service.keys import KEYS_FILE

    return _text_of(store.root / KEYS_FILE)


def _text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def export_version(store: ModelStore, name: str, version: int) -> bytes:
    directory = store.layout.version_dir(name, version)
    if not (directory / METADATA_FILE).is_file():
        store.metadata(name, version)  # raises the right not-found error
    return version_tar({p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()})


def _publish(
    store: ModelStore, name: str, aliases: list[str], stdin: IO[bytes], verify: Verify | None
) -> int:
    with tempfile.TemporaryDirectory(prefix="model-store-publish-") as scratch:
        directory = Path(scratch)
        files = set(extract_version_tar(stdin, directory))
        for required in (ARTIFACT_FILE, METADATA_FILE):
            if required not in files:
                raise StoreError(f"a published version needs {required}")
        try:
            meta = yaml.safe_load((directory / METADATA_FILE).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            raise StoreError(f"the published {METADATA_FILE} is not valid YAML") from None
        if not isinstance(meta, dict):
            raise StoreError(f"the published {METADATA_FILE} is not a mapping")
        extras = {f: (directory / f).read_bytes() for f in files - {ARTIFACT_FILE, METADATA_FILE}}
        return store.publish(
            name,
            (directory / ARTIFACT_FILE).read_bytes(),
            {k: v for k, v in meta.items() if k not in {"version", "artifact"}},
            aliases=tuple(check_alias(a) for a in aliases),
            verify=verify,
            extra_files=extras,
        )


def _error_body(exc: ServiceError) -> dict[str, Any]:
    body = {"status": int(exc.status), **exc.to_dict()}
    if isinstance(exc, PromotionRefused):
        body["reason"] = exc.reason
    return body


def _write_json(stdout: IO[bytes], value: Any) -> None:
    stdout.write(json.dumps(value, default=str).encode() + b"\n")
    stdout.flush()


def main(store_root: Path, verify: Verify | None) -> int:
    os.umask(0o022)  # every file the store host writes is readable by the service
    return serve(
        store_root,
        os.environ.get("SSH_ORIGINAL_COMMAND", ""),
        sys.stdin.buffer,
        sys.stdout.buffer,
        verify,
    )
