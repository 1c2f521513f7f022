"""The layering contracts of .importlinter (run by `make lint` too): the core never imports
the web layer, the store imports neither the runtime nor training, and the serving code never
imports the training extra. A broken contract fails here with the import chain that breaks
it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """lint-imports on the `service` package found in CWD, with the project's contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(CONFIG), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layering_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken\.", result.stdout), result.stdout


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "service", tmp_path / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_a_core_module_reaching_flask_through_the_web_layer_breaks_the_contract(tmp_path):
    root = copy_of_the_package(tmp_path)
    (root / "service" / "monitoring" / "reaches_web.py").write_text(
        "from service.api import errors\n"
    )
    result = lint_imports(root)
    assert result.returncode != 0
    assert "service.monitoring is not allowed to import flask" in result.stdout
    assert "service.monitoring.reaches_web -> service.api.errors" in result.stdout


def test_the_store_importing_the_runtime_breaks_the_contract(tmp_path):
    root = copy_of_the_package(tmp_path)
    (root / "service" / "store" / "loads.py").write_text(
        "def load(artifact):\n    from service.runtime.model import LoadedModel\n\n"
        "    return LoadedModel(artifact)\n"
    )
    result = lint_imports(root)
    assert result.returncode != 0
    assert "service.store is not allowed to import service.runtime" in result.stdout


def test_serving_code_importing_the_training_extra_even_lazily_breaks_the_contract(tmp_path):
    root = copy_of_the_package(tmp_path)
    (root / "service" / "runtime" / "plots.py").write_text(
        "def draw():\n    import matplotlib\n\n    return matplotlib\n"
    )
    result = lint_imports(root)
    assert result.returncode != 0
    assert "service.runtime is not allowed to import matplotlib" in result.stdout
