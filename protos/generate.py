"""Generate the Python code for every ``.proto`` under ``protos/``.

Run ``python protos/generate.py`` after editing a proto; ``--check`` exits 1
when the checked-in code differs from what the protos generate (CI runs it
through ``tests/test_protos.py``).

Two rewrites follow ``grpc_tools.protoc``:

* imports become absolute under ``lmaas.protos`` (the installed package name);
* messages register in a private descriptor pool (``lmaas.protos._pool``), not
  protobuf's default one. Our ``inference`` package has the same message names
  as tritonclient's copy of Triton's protos, and two files defining one symbol
  cannot share a pool, so without this an application could not import both.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
POOL_IMPORT = "from lmaas.protos._pool import POOL as _POOL\n"


def proto_files() -> list[Path]:
    return sorted(ROOT.rglob("*.proto"))


def _rewrite(text: str, packages: set[str]) -> str:
    for pkg in sorted(packages, key=len, reverse=True):
        text = re.sub(rf"^from {re.escape(pkg)} import ", f"from lmaas.protos.{pkg} import ", text, flags=re.M)
    text = re.sub(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')", r"\1lmaas.protos.", text)
    if "_descriptor_pool.Default()" in text:
        text = text.replace("_descriptor_pool.Default()", "_POOL")
        text = text.replace(
            "from google.protobuf import symbol_database",
            POOL_IMPORT + "from google.protobuf import symbol_database",
            1,
        )
    return text


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # build-time dependency only

    files = [str(p.relative_to(ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{_well_known()}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    packages = {str(Path(f).parent).replace("/", ".") for f in files}
    written = []
    for path in sorted(out.rglob("*_pb2*.py*")):
        path.write_text(_rewrite(path.read_text(), packages))
        written.append(path)
    return written


def _well_known() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        written = generate(Path(tmp))
        stale = []
        for path in written:
            rel = path.relative_to(tmp)
            target = ROOT / rel
            if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                stale.append(str(rel))
                if not args.check:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(path.read_bytes())
    if args.check and stale:
        print("generated code is stale: " + ", ".join(stale), file=sys.stderr)
        return 1
    print("up to date" if not stale else "regenerated: " + ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
