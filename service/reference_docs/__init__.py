"""The reference pages that mirror code, generated from it so they cannot drift.

docs/reference/configuration.md comes from ``Settings`` (service/config.py), modelctl.md
from the click commands (service/cli.py) and metadata.md from metadata.yaml's JSON Schema
(service/store/metadata.py). ``make docs`` writes them; tests/test_reference_docs.py fails
when a committed page differs from what the code generates.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# The repository's docs/reference/ (the package sits at service/reference_docs/).
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "docs" / "reference"


def _renderers() -> dict[str, Callable[[], str]]:
    # Imported here: rendering modelctl's page imports the whole CLI.
    from service.reference_docs import commands, configuration, metadata

    return {
        "configuration.md": configuration.render,
        "modelctl.md": commands.render,
        "metadata.md": metadata.render,
    }


def generate() -> dict[str, str]:
    """Each page's file name under docs/reference/ and the Markdown the code gives it."""
    return {name: render() for name, render in _renderers().items()}


def stale(directory: Path = REFERENCE_DIR) -> list[str]:
    """The pages in ``directory`` that are missing or differ from what the code gives."""
    return [
        name
        for name, text in generate().items()
        if not (directory / name).is_file() or (directory / name).read_text("utf-8") != text
    ]


def write(directory: Path = REFERENCE_DIR) -> list[str]:
    """Write the pages that changed into ``directory``; return their names."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in generate().items():
        path = directory / name
        if not path.is_file() or path.read_text("utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed
