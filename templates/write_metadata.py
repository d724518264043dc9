"""Writes ``templates/metadata.json`` from the clipbeam command line.

Run from the repository root after adding or changing a job option::

    python -m templates.write_metadata          # rewrite templates/metadata.json
    python -m templates.write_metadata --check  # exit 1 if the file is stale

The tests fail while the file and the parser disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from templates.launcher import template_metadata

METADATA = Path(__file__).with_name("metadata.json")


def render() -> str:
    """The metadata as the file holds it: 2-space indented JSON with a final newline."""
    return json.dumps(template_metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrites (or with ``--check`` compares) ``templates/metadata.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is stale")
    args = parser.parse_args(argv)
    text = render()
    current = METADATA.read_text(encoding="utf-8") if METADATA.exists() else ""
    if args.check:
        if current != text:
            print(f"{METADATA} is stale: run `python -m templates.write_metadata`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        METADATA.write_text(text, encoding="utf-8")
        print(f"wrote {METADATA}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
