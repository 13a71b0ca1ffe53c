"""The OpenAPI document kept in the repository: ``python -m lmaas.control_plane.rest.openapi [--write|--check]``.

Without flags it prints the document the app generates; ``--write`` stores it as ``openapi.json`` beside
this module; ``--check`` exits 1 if the stored file differs (tests run the same comparison).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["DOCUMENT", "generate", "render"]

DOCUMENT = Path(__file__).with_name("openapi.json")


def generate() -> dict[str, Any]:
    """The document of the app, built without a running control plane (routes need none to be described)."""
    from lmaas.control_plane.rest.app import create_app

    app = create_app(SimpleNamespace(auth=None))
    doc: dict[str, Any] = app.openapi()
    return doc


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {DOCUMENT.name}")
    group.add_argument("--check", action="store_true", help=f"exit 1 if {DOCUMENT.name} is stale")
    args = parser.parse_args(argv)
    text = render(generate())
    if args.write:
        DOCUMENT.write_text(text)
        return 0
    if args.check:
        current = DOCUMENT.read_text() if DOCUMENT.exists() else ""
        if current != text:
            print(f"{DOCUMENT} is stale: run python -m lmaas.control_plane.rest.openapi --write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
