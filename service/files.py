"""Files replaced whole: a reader sees the old content or the new one, never part of one.

Every file the project replaces in place (a version's metadata.yaml, aliases.yaml, the key
file, a signature, a batch prediction's output, an exported prediction log, a backup) is
written under a temporary name in the same directory, flushed to disk, and renamed over
the target; on any failure the temporary file is removed and the target is left as it was.
Standard library only, so every layer (store, monitoring, the CLI) may import it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# Names a writer is still working on. The store skips them when it lists models and
# versions, and a crashed writer's leftovers are recognisable by it.
TEMP_PREFIX = ".tmp-"

# Readable by every user that runs a worker (the store is shared between users).
DEFAULT_MODE = 0o644


def write_atomic(
    path: str | os.PathLike[str], data: str | bytes, *, mode: int = DEFAULT_MODE
) -> None:
    """Replace the file at ``path`` with ``data`` (text is written as UTF-8)."""
    payload = data.encode() if isinstance(data, str) else data
    with replacing(path, mode=mode) as handle:
        handle.write(payload)


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike[str],
    *,
    text: bool = False,
    mode: int = DEFAULT_MODE,
    **open_options: Any,
) -> Iterator[IO[Any]]:
    """A file object whose content replaces ``path`` when the block ends without an error.

    Binary unless ``text``; ``open_options`` (``newline=""``, ``encoding``) go to ``open``.
    For writers that stream (a CSV written row by row, an archive), where building the whole
    content in memory first would not do.
    """
    target = Path(path)
    temp = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
    if text:
        open_options.setdefault("encoding", "utf-8")
    try:
        with open(temp, "w" if text else "wb", **open_options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
