"""What signing costs: each demo model's publish and load, with and without a signature.

    .venv/bin/python loadtests/signing_cost.py [--rounds 15]

Trains the demo models into a scratch store once, then for each: publish (unsigned, and
signed with a fresh P-256 key) and load_artifact (sha256 only, and with the signature
verified against the trusted key), the median of ``--rounds`` runs each, in one process
(model-signing already imported; its import is timed on its own).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from service.store import ModelStore, signing
from service.training.demo import train_demo_models


def median_ms(action, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(name, plain, signer, trusting, private, public, rounds: int) -> Path:
    """One model's row of the table; returns its signed version's directory."""
    directory = plain.layout.version_dir(name, 1)
    meta = yaml.safe_load((directory / "metadata.yaml").read_text())
    for key in ("version", "artifact", "created_at"):
        meta.pop(key)
    pickled = (directory / "model.pkl").read_bytes()
    extra = {
        p.name: p.read_bytes()
        for p in directory.iterdir()
        if p.name not in {"model.pkl", "metadata.yaml"}
    }
    sizes = sum(p.stat().st_size for p in directory.iterdir())
    publish = median_ms(lambda: plain.publish(name, pickled, meta, extra_files=extra), rounds)
    publish_signed = median_ms(
        lambda: signer.publish(name, pickled, meta, extra_files=extra), rounds
    )
    signed_version = signer.versions(name)[-1]
    load = median_ms(lambda: plain.load_artifact(name, 1), rounds)
    load_verified = median_ms(lambda: trusting.load_artifact(name, signed_version), rounds)
    signed_dir = plain.layout.version_dir(name, signed_version)
    sign_alone = median_ms(lambda: signing.sign_version(signed_dir, private), rounds)
    verify_alone = median_ms(
        lambda: signing.verify_version(signed_dir, [public], name=name, version=1),
        rounds,
    )
    print(
        f"| {name} | {sizes} | {publish:.1f} ms | {publish_signed:.1f} ms | {load:.1f} ms | "
        f"{load_verified:.1f} ms | {sign_alone:.1f} ms | {verify_alone:.1f} ms |"
    )
    return signed_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="signing-cost-"))
    private, public = signing.generate_key_pair(base / "keys")
    plain = ModelStore(base / "store")
    signer = ModelStore(base / "store", signing_key=private)
    trusting = ModelStore(base / "store", trusted_keys=[public])
    train_demo_models(plain, progress=False)
    import_ms = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import model_signing.verifying"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr.splitlines()[-1]
    print(f"import model_signing (cold, cumulative us): {import_ms.split('|')[1].strip()}")
    print(
        "| model | files (bytes) | publish | publish signed | load | load verified | "
        "sign alone | verify alone |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in plain.names():
        signed_dir = measure(name, plain, signer, trusting, private, public, args.rounds)
    sig = signed_dir / signing.SIGNATURE_FILE
    print(f"model.sig: {sig.stat().st_size} bytes")


if __name__ == "__main__":
    main()
