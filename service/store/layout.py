"""Names, versions, aliases and the paths they map to inside the store.

Every path the store touches is built here from validated parts, and checked
to stay inside the store root, so no request can steer a read elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

from service.errors import (
    AliasNotFound,
    BadRequest,
    IntegrityError,
    InvalidMetadata,
    VersionNotFound,
)

# Used with fullmatch: "$" alone would also accept a trailing newline.
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,8}")

METADATA_FILE = "metadata.yaml"
ALIASES_FILE = "aliases.yaml"
LOCK_FILE = ".lock"
COUNTER_FILE = ".last_version"


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """``name``, ``name@3`` or ``name@production``: a version or an alias, not both."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def resolve_ref(store: Any, ref: ModelRef, default_alias: str = "production") -> int:
    """The version a reference points at in ``store`` (this store, or a fleet's remote one:
    anything with ``versions(name)`` and ``aliases(name)``)."""
    if ref.version is not None:
        versions = store.versions(ref.name)
        if ref.version not in versions:
            raise VersionNotFound(
                f"model {ref.name!r} has no version {ref.version}",
                details={"model": ref.name, "versions": versions},
            )
        return ref.version
    alias = ref.alias or default_alias
    aliases = store.aliases(ref.name)
    if alias not in aliases:
        raise AliasNotFound(
            f"model {ref.name!r} has no alias {alias!r}",
            details={"model": ref.name, "aliases": sorted(aliases)},
        )
    return int(aliases[alias])


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise BadRequest(
            f"invalid model name {name!r}: use lowercase letters, digits and '-' (at most 64)",
            code="invalid_model_name",
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
        raise BadRequest(
            f"invalid alias {alias!r}: use a lowercase letter then letters, digits, '_' or '-'",
            code="invalid_alias",
        )
    return alias


def check_version(version: int | str) -> int:
    text = str(version)
    if isinstance(version, bool) or not VERSION_PATTERN.fullmatch(text):
        raise BadRequest(
            f"invalid version {version!r}: versions are positive integers",
            code="invalid_version",
        )
    return int(text)


# Every request names its model: the references seen most recently are parsed once. Bad
# ones raise, and so are never kept.
@functools.lru_cache(maxsize=256)
def parse_ref(text: str) -> ModelRef:
    """Parse ``name[@version|@alias]``."""
    name, sep, selector = text.partition("@")
    return model_ref(name, selector if sep else None)


def model_ref(name: str, selector: str | None = None) -> ModelRef:
    """``name`` at ``selector``: None for the default alias, else a version number or an
    alias (for protocols that send the two apart, as the Open Inference Protocol does)."""
    check_name(name)
    if selector is None:
        return ModelRef(name)
    if selector.isdigit():
        return ModelRef(name, version=check_version(selector))
    return ModelRef(name, alias=check_alias(selector))


def is_version_dir(path: Path) -> bool:
    return VERSION_PATTERN.fullmatch(path.name) is not None and path.is_dir()


class StoreLayout:
    """Where each file of the store lives."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def model_dir(self, name: str) -> Path:
        return self._inside(self.root / check_name(name))

    def version_dir(self, name: str, version: int) -> Path:
        return self._inside(self.model_dir(name) / str(check_version(version)))

    def metadata_file(self, name: str, version: int) -> Path:
        return self.version_dir(name, version) / METADATA_FILE

    def aliases_file(self, name: str) -> Path:
        return self.model_dir(name) / ALIASES_FILE

    def artifact_file(self, name: str, version: int, file_name: str) -> Path:
        if not file_name or "/" in file_name or "\\" in file_name or file_name.startswith("."):
            raise InvalidMetadata(f"artifact file name {file_name!r} must be a plain file name")
        return self._inside(self.version_dir(name, version) / file_name)

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self.root and not resolved.is_relative_to(self.root):
            # Only a symlink planted in the store can get here: names are validated.
            raise IntegrityError(f"path {path} resolves outside the model store {self.root}")
        return resolved
