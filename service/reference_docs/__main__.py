"""``python -m service.reference_docs [--check] [--out DIR]``: what ``make docs`` runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.reference_docs import REFERENCE_DIR, stale, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.reference_docs",
        description="Generate docs/reference/{configuration,modelctl,metadata}.md from the code.",
    )
    parser.add_argument("--out", type=Path, default=REFERENCE_DIR, help="default: %(default)s")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a page is out of date"
    )
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.out)
        for name in out_of_date:
            print(f"{args.out / name} differs from the code; run `make docs`", file=sys.stderr)
        return 1 if out_of_date else 0
    changed = write(args.out)
    print("wrote " + ", ".join(changed) if changed else "the reference pages are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
