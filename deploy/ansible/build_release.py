"""Build the current checkout as a release that hosts without a package index can install.

    python deploy/ansible/build_release.py --out dist/release [--release NAME]

Writes, under OUT:
  wheelhouse/    the project's wheel and a wheel of every runtime dependency, at the versions
                 constraints.txt pins (the ones the test suite passes with), plus the host
                 tools of deploy/ansible/requirements-host.txt (supervisord). A server-only
                 install: the hosts serve, keep the store and verify what is published to
                 it, but never train, so the training extra (the ONNX converter, the model
                 card's plots) stays on the machine that trains
  bundles/       (made by the deploy) archives of the wheels some host lacked
  release.yaml   the release's name, the project wheel, every wheel with its sha256, and the
                 requirements the hosts install with (deploy.yml reads it)

The release's name is `<version>-<12 hex digits>`, a digest of the wheels' names and contents,
so the same checkout gives the same name and a second `make deploy` finds nothing to do.
`--release NAME` names it instead (a name is a directory on the hosts: never reuse one for
other contents; the deploy refuses to).

The checkout is built from a copy in a temporary directory, so no build/ or *.egg-info lands
in it, with fixed file times, so the wheel's bytes depend on the sources alone. Wheels already
in OUT/wheelhouse are reused; the package index is asked only for what is missing.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
HOST_REQUIREMENTS = Path(__file__).resolve().parent / "requirements-host.txt"
# 1980-01-01, the earliest time a zip entry can hold: every file of the project's wheel gets
# it, so rebuilding unchanged sources gives the same bytes (and the same release name).
SOURCE_DATE_EPOCH = "315532800"
RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Directories of a checkout that never belong in a build.
NOT_SOURCES = {".git", ".venv", ".ansible-venv", ".bench-peers", "dist", "build", ".fleet"}


class BuildError(Exception):
    pass


def log(message: str) -> None:
    print(f"build_release: {message}", file=sys.stderr, flush=True)


def pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True)


def source_files(root: Path) -> list[Path]:
    """The checkout's files: tracked ones and new ones git does not ignore, as they are in
    the work tree (what `make deploy` from here should ship)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout (an unpacked archive): everything but the usual build output.
        return sorted(
            path.relative_to(root)
            for path in root.rglob("*")
            if path.is_file()
            and not NOT_SOURCES.intersection(path.relative_to(root).parts)
            and "__pycache__" not in path.parts
            and not any(part.endswith(".egg-info") for part in path.parts)
        )
    names = {name for name in listed.decode().split("\0") if name}
    # A tracked file deleted in the work tree is not part of the checkout any more.
    return sorted(Path(name) for name in names if (root / name).is_file())


def copy_sources(root: Path, destination: Path) -> None:
    for relative in source_files(root):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, target)


def project_version(root: Path) -> str:
    parser = configparser.ConfigParser()
    parser.read(root / "setup.cfg")
    return parser["metadata"]["version"]


def build_project_wheel(sources: Path, wheel_dir: Path) -> Path:
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    common = ["wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheel_dir), str(sources)]
    # With this interpreter's setuptools first: no index, and the same backend each time.
    result = pip(*common[:1], "--no-build-isolation", *common[1:], env=env)
    if result.returncode != 0:
        log("no usable setuptools here; building the wheel in an isolated environment")
        result = pip(*common, env=env)
    if result.returncode != 0:
        raise BuildError(f"the project's wheel did not build:\n{result.stderr.strip()}")
    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one project wheel, found {[w.name for w in wheels]}")
    return wheels[0]


def fill_wheelhouse(project_wheel: Path, wheelhouse: Path, cache: Path) -> None:
    """Put the project's wheel and a wheel of each dependency in `wheelhouse`: from `cache`
    (the previous build's wheelhouse) when they are all there, else from the index."""
    args = [
        "wheel",
        "--quiet",
        "--wheel-dir",
        str(wheelhouse),
        "--constraint",
        str(CONSTRAINTS),
        "--requirement",
        str(HOST_REQUIREMENTS),
        str(project_wheel),
    ]
    offline = pip(*args[:1], "--no-index", "--find-links", str(cache), *args[1:])
    if offline.returncode == 0:
        log(f"dependencies reused from {cache}")
        return
    log("fetching the dependencies missing from the wheelhouse (a minute or more the first time)")
    online = pip(*args[:1], "--find-links", str(cache), *args[1:])
    if online.returncode != 0:
        raise BuildError(f"the wheelhouse could not be filled:\n{online.stderr.strip()}")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def wheel_requirement(filename: str) -> str:
    # {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl, names normalised.
    distribution, version = filename.split("-")[:2]
    return f"{distribution}=={version}"


def describe(wheelhouse: Path, project_wheel: str, version: str, name: str | None) -> dict:
    wheels = [
        {"file": path.name, "sha256": sha256_file(path)}
        for path in sorted(wheelhouse.glob("*.whl"), key=lambda path: path.name)
    ]
    digest = hashlib.sha256(
        "".join(f"{wheel['file']} {wheel['sha256']}\n" for wheel in wheels).encode()
    ).hexdigest()
    supervisor = next(
        (wheel["file"] for wheel in wheels if wheel["file"].lower().startswith("supervisor-")),
        None,
    )
    if supervisor is None:
        raise BuildError("the wheelhouse has no supervisor wheel (requirements-host.txt)")
    return {
        "release": name or f"{version}-{digest[:12]}",
        "version": version,
        # The hosts' /usr/bin/python3 must be this one (the wheels are built for it).
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "digest": digest,
        "project_wheel": project_wheel,
        "supervisor_requirement": wheel_requirement(supervisor),
        # Every wheel at its exact version: the hosts install with these as constraints, so
        # another version left in their wheelhouse is never picked.
        "requirements": [
            wheel_requirement(wheel["file"])
            for wheel in wheels
            if wheel["file"] != project_wheel and wheel["file"] != supervisor
        ],
        "wheels": wheels,
    }


def build(out: Path, release: str | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "wheelhouse"
    cache.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="model-service-release-") as temporary:
        temporary = Path(temporary)
        sources, project_dir = temporary / "src", temporary / "project"
        copy_sources(ROOT, sources)
        project_wheel = build_project_wheel(sources, project_dir)
        log(f"built {project_wheel.name}")
        # A fresh wheelhouse holds exactly this release's wheels; it replaces the old one
        # only once it is complete.
        wheelhouse = out / "wheelhouse.new"
        shutil.rmtree(wheelhouse, ignore_errors=True)
        wheelhouse.mkdir()
        # The project's wheel goes in first, so an older wheel of the same name in the cache
        # is never the one picked.
        shutil.copyfile(project_wheel, wheelhouse / project_wheel.name)
        fill_wheelhouse(wheelhouse / project_wheel.name, wheelhouse, cache)
    shutil.rmtree(cache)
    wheelhouse.rename(cache)
    # Archives of wheels the deploy made for hosts that lacked them: of the previous release.
    shutil.rmtree(out / "bundles", ignore_errors=True)
    description = describe(cache, project_wheel.name, project_version(ROOT), release)
    header = "# Written by deploy/ansible/build_release.py; read by deploy/ansible/deploy.yml.\n"
    (out / "release.yaml").write_text(header + yaml.safe_dump(description, sort_keys=False))
    return description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "release")
    parser.add_argument("--release", help="the release's name (default: version-digest)")
    args = parser.parse_args(argv)
    if args.release is not None and not RELEASE_NAME.match(args.release):
        parser.error(
            f"--release {args.release!r}: letters, digits, '.', '_' and '-' only "
            "(it names a directory on the hosts)"
        )
    started = time.monotonic()
    try:
        description = build(args.out.resolve(), args.release)
    except BuildError as exc:
        log(str(exc))
        return 1
    log(
        f"release {description['release']}: {len(description['wheels'])} wheels in "
        f"{args.out / 'wheelhouse'} ({time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
