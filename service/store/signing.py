"""Signed versions: OpenSSF model signing (``model-signing``) with elliptic-curve keys.

A version's publisher signs its whole directory (model.pkl, metadata.yaml and every
other file, such as model.onnx) with a private key; the signature, a Sigstore bundle
with a DSSE envelope over an in-toto statement listing each file's sha256, is written
next to them as ``model.sig``, the one file the signature leaves out. No network and no
Sigstore service are involved: trust is the list of public keys a server is given.

The sha256 in metadata.yaml detects a damaged pickle; it cannot stop someone who can
write the store, who rewrites the pickle and its sha256 together. A signature can: with
trusted keys configured, :func:`verify_version` runs before every unpickling (it is
called from ``ModelStore``'s one loading path) and refuses a version that is unsigned,
signed by a key not trusted, or changed in any file since it was signed. With no
trusted key configured nothing is checked beyond the sha256, as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from service.errors import SignatureRefused, StoreError
from service.files import write_atomic

SIGNATURE_FILE = "model.sig"
PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub.pem"
# A signature lists one digest per file of a version: a few kilobytes.
MAX_SIGNATURE_BYTES = 1024 * 1024


def _hashing_config():
    """Every file of the version by its sha256, except the signature; symlinks refused.
    A fresh object each time: the library's verify adds to the config it is given."""
    from model_signing import hashing

    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    )


# -- keys ------------------------------------------------------------------------------


def generate_key_pair(out_dir: Path) -> tuple[Path, Path]:
    """A new P-256 key pair in ``out_dir``: the private key (PEM, PKCS#8, mode 0600) and
    its public key (PEM). Refuses to replace an existing key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise StoreError(f"{path} exists; not replacing a signing key")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Created with its final mode (O_EXCL): the private key is never readable by others.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def key_id(public_key: Path) -> str:
    """The first 16 hex digits of the sha256 of a public key's PEM: how logs name a key."""
    return hashlib.sha256(Path(public_key).read_bytes()).hexdigest()[:16]


def private_key_id(private_key: Path) -> str:
    """The key id of a private key's public half (what verifiers will log)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(private_key).read_bytes(), None)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()[:16]


def check_trusted_keys(paths: Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    """The trusted public keys as paths, each read and checked now (an EC key on a curve
    model-signing supports), so a wrong setting fails at start, not at the first load."""
    paths = list(paths)
    if not paths:
        return ()  # no import: the store host's every request builds a ModelStore
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = []
    for text in paths:
        path = Path(text)
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise StoreError(f"trusted signing key {path}: {exc.strerror}") from None
        except ValueError:
            raise StoreError(f"trusted signing key {path}: not a PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
            "secp256r1",
            "secp384r1",
            "secp521r1",
        ):
            raise StoreError(f"trusted signing key {path}: not a P-256/384/521 EC public key")
        keys.append(path)
    return tuple(keys)


def check_private_key(path: str | os.PathLike[str]) -> Path:
    """A signing key that can sign: read and checked before anything is published."""
    from model_signing._signing.sign_ec_key import Signer

    try:
        Signer(Path(path))
    except OSError as exc:
        raise StoreError(f"signing key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise StoreError(f"signing key {path}: not a usable EC private key ({exc})") from None
    return Path(path)


# -- signing and verifying ------------------------------------------------------------


def sign_version(directory: Path, private_key: Path) -> Path:
    """Sign every file of a version directory; the signature goes in it as model.sig."""
    return write_signature(directory, signature_of(directory, private_key))


def signature_of(directory: Path, private_key: Path) -> bytes:
    """The signature of a version directory's files (all but model.sig), as bytes."""
    from model_signing import signing

    # Written outside the directory: a temporary file in it while it is hashed would be
    # signed as one of its files.
    fd, temp_name = tempfile.mkstemp(prefix="model-sig-", suffix=".sig")
    os.close(fd)
    temp = Path(temp_name)
    try:
        (
            signing.Config()
            .use_elliptic_key_signer(private_key=private_key)
            .set_hashing_config(_hashing_config())
            .sign(directory, temp)
        )
        return temp.read_bytes()
    finally:
        temp.unlink(missing_ok=True)


def write_signature(directory: Path, data: bytes) -> Path:
    """model.sig, written under a temporary name and renamed: a reader sees the old
    signature or the new one, never part of one."""
    if not data or len(data) > MAX_SIGNATURE_BYTES:
        raise StoreError(f"a signature is 1 to {MAX_SIGNATURE_BYTES} bytes, not {len(data)}")
    target = directory / SIGNATURE_FILE
    write_atomic(target, data)
    return target


@dataclasses.dataclass(frozen=True)
class VerifiedVersion:
    """What a signature was checked against: the files' contents as read once, so the
    caller unpickles the very bytes that were verified, whatever happens on disk after."""

    key_id: str
    files: dict[str, bytes]


def verify_version(
    directory: Path, trusted_keys: Sequence[Path], *, name: str, version: int
) -> VerifiedVersion | None:
    """Refuse (SignatureRefused) a version directory whose model.sig does not verify
    against one of ``trusted_keys``; None when no key is trusted (nothing checked).
    Called before anything of the version is unpickled.

    Each file is read once into memory and the signature checked against a private copy
    of those bytes (a directory only this process can write), so a file swapped in the
    version directory after the check cannot be what is loaded."""
    if not trusted_keys:
        return None
    where = f"{name}@{version}"
    if not (directory / SIGNATURE_FILE).is_file():
        _refuse(
            name, version, "unsigned", f"{where} has no signature ({SIGNATURE_FILE}) and "
            "trusted signing keys are configured; refusing to unpickle it",
        )  # fmt: skip
    files = {}
    for path in sorted(directory.iterdir()):
        if path.is_symlink() or not path.is_file():
            _refuse(
                name, version, "mismatch", f"{where} holds {path.name!r}, which is not a "
                "plain file (a version holds only files); refusing to unpickle it",
            )  # fmt: skip
        files[path.name] = path.read_bytes()
    with tempfile.TemporaryDirectory(prefix="model-verify-") as scratch:
        snapshot = Path(scratch) / directory.name
        snapshot.mkdir()
        for file_name, data in files.items():
            (snapshot / file_name).write_bytes(data)
        key = _verified_by(snapshot, trusted_keys, name=name, version=version)
    files.pop(SIGNATURE_FILE)
    return VerifiedVersion(key_id=key, files=files)


def _verified_by(directory: Path, trusted_keys: Sequence[Path], *, name: str, version: int) -> str:
    """The id of the trusted key the directory's signature verifies with, else refused."""
    from model_signing import verifying

    where = f"{name}@{version}"
    mismatches, others = [], []
    for key in trusted_keys:
        try:
            (
                verifying.Config()
                .use_elliptic_key_verifier(public_key=key)
                .set_hashing_config(_hashing_config())
                .verify(directory, directory / SIGNATURE_FILE)
            )
        except Exception as exc:  # the library raises ValueError and cryptography's errors
            text = str(exc) or type(exc).__name__
            if text.startswith("Signature mismatch"):
                mismatches.append(_what_changed(text))
            else:
                others.append(text)
            continue
        return key_id(key)
    if mismatches:
        _refuse(
            name, version, "mismatch", f"{where} was changed after it was signed "
            f"({mismatches[0]}); refusing to unpickle it",
        )  # fmt: skip
    if any(text.startswith("Key mismatch") for text in others):
        _refuse(
            name, version, "untrusted_key", f"{where} is signed by a key that is not trusted "
            f"(trusted: {', '.join(key_id(k) for k in trusted_keys)}); refusing to unpickle it",
        )  # fmt: skip
    _refuse(
        name, version, "invalid", f"{where}: its signature cannot be verified "
        f"({'; '.join(others)}); refusing to unpickle it",
    )  # fmt: skip


def _what_changed(text: str) -> str:
    """The files named in model-signing's "Signature mismatch" message, without digests
    (a version's file names are plain: letters, digits, '_', '.', '-')."""
    changed = re.findall(r"Hash mismatch for \\?'([\w.-]+)\\?'", text)
    added = re.findall(r"Extra files found in model \\?'[^']*?\\?': ([\w.,\s-]+)", text)
    missing = re.findall(r"Missing files in model \\?'[^']*?\\?': ([\w.,\s-]+)", text)
    parts = [
        f"{label}: {', '.join(n.strip(', ') for n in names)}"
        for label, names in (("changed", changed), ("added", added), ("missing", missing))
        if names
    ]
    return "; ".join(parts) or text


def _refuse(name: str, version: int, reason: str, message: str) -> NoReturn:
    # Not logged here: the caller says what it does instead (keeps serving, skips it). The
    # registry that tried to load it tells its refusal listeners (the app's metrics).
    raise SignatureRefused(message, reason=reason, details={"model": name, "version": version})
