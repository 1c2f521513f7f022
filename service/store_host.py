"""``model-store-serve``: the console script a fleet's store host runs for every request.

It joins two layers the store itself keeps apart: the store's side of the protocol
(:mod:`service.store.serve`) and the model runtime that checks a version before it is
published, so nothing under ``service.store`` imports ``service.runtime``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service.store.serve import main
from service.store.store import StoredArtifact


def console() -> None:
    """``model-store-serve --store PATH``: the forced command of the keys that may reach a
    fleet's store. A console script of its own, lighter than modelctl: it runs once for
    every request, and each host's mirror asks every second."""
    parser = argparse.ArgumentParser(prog="model-store-serve", description=console.__doc__)
    parser.add_argument("--store", required=True, type=Path, help="the store on this host")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(main(args.store, verify=verify_loaded))


def verify_loaded(artifact: StoredArtifact) -> None:
    """A published version must load and replay its golden example, as a local publish.
    Imported only when a version is published: most requests need no model runtime."""
    from service.runtime.model import LoadedModel

    LoadedModel(artifact)
