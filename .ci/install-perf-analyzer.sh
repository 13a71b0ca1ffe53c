#!/usr/bin/env bash
# Install Triton's perf_analyzer into a virtual environment, on Debian 12 (glibc 2.36), x86_64.
#
#   .ci/install-perf-analyzer.sh VENV_DIR
#
# PyPI's `perf-analyzer` package only has glibc>=2.38 wheels, so on Debian 12 it installs no binary. The
# tritonclient<=2.51.0 platform wheels (manylinux1_x86_64) carry a prebuilt perf_analyzer under
# tritonclient-X.data/data/bin/ that runs on Debian 12. This script downloads that wheel into a temporary
# folder (it is never installed: the venv keeps its own tritonclient), extracts the binary, and installs
#
#   VENV_DIR/libexec/perf_analyzer/perf_analyzer          the real binary
#   VENV_DIR/libexec/perf_analyzer/lib/libcudart.so.12    from PyPI's nvidia-cuda-runtime-cu12 wheel (the
#                                                         binary links it; without a GPU it is loaded, unused)
#   VENV_DIR/bin/perf_analyzer                            a wrapper: sets LD_LIBRARY_PATH, execs the binary
#
# libcudart is extracted from its wheel rather than pip-installed into the venv, so the venv gains no
# package that pyproject.toml does not declare and nothing can clash with torch's own pin of it.
# The other shared libraries come from Debian: run .ci/install-system.sh first (libb64-0d, libssl3, ...).
#
# Idempotent: exits at once when the installed copy matches the pinned versions and runs.
# Environment: PERF_ANALYZER_TRITONCLIENT_VERSION (default 2.51.0), PERF_ANALYZER_CUDART_VERSION
# (default 12.6.77, the CUDA runtime of Triton 24.10 = tritonclient 2.51.0). The defaults are pinned by
# sha256; other versions are downloaded without a hash pin.
set -euo pipefail

log() { printf '[install-perf-analyzer] %s\n' "$*" >&2; }

if [[ $# -ne 1 ]]; then
  echo "usage: $0 VENV_DIR" >&2
  exit 2
fi
if [[ ! -x $1/bin/python ]]; then
  log "not a virtual environment (no $1/bin/python)"
  exit 2
fi
VENV=$(cd "$1" && pwd -P)
PY=$VENV/bin/python

TRITONCLIENT_VERSION=${PERF_ANALYZER_TRITONCLIENT_VERSION:-2.51.0}
CUDART_VERSION=${PERF_ANALYZER_CUDART_VERSION:-12.6.77}
# sha256 of the default wheels, as published on PyPI.
TRITONCLIENT_SHA256=c485bb0123bdf310f90bc8b03d3489b28df2ffed55b30c7eee0b795b48113d52 # 2.51.0 manylinux1_x86_64
CUDART_SHA256=a84d15d5e1da416dd4774cb42edf5e954a3e60cc945698dc1d5be02321c44dc8       # 12.6.77 manylinux2014_x86_64

DEST=$VENV/libexec/perf_analyzer
WRAPPER=$VENV/bin/perf_analyzer
STAMP="tritonclient==$TRITONCLIENT_VERSION nvidia-cuda-runtime-cu12==$CUDART_VERSION"

if [[ $(uname -m) != x86_64 ]]; then
  log "only x86_64 is supported (this is $(uname -m))"
  exit 1
fi

# Names the Debian package for each shared library perf_analyzer may miss.
debian_package_of() {
  case $1 in
    libb64.so.0d) echo libb64-0d ;;
    libssl.so.3 | libcrypto.so.3) echo libssl3 ;;
    libz.so.1) echo zlib1g ;;
    libstdc++.so.6) echo libstdc++6 ;;
    libgcc_s.so.1) echo libgcc-s1 ;;
    *) echo "?" ;;
  esac
}

# Fails, naming each library and its Debian package, when the binary in $1 cannot resolve a library.
check_libraries() {
  local dir=$1 missing
  missing=$(LD_LIBRARY_PATH="$dir/lib" ldd "$dir/perf_analyzer" | awk '/not found/ { print $1 }')
  if [[ -n $missing ]]; then
    for lib in $missing; do
      log "missing shared library: $lib (Debian package: $(debian_package_of "$lib"))"
    done
    log "run .ci/install-system.sh first"
    return 1
  fi
}

if [[ -x $WRAPPER && -f $DEST/STAMP && $(<"$DEST/STAMP") == "$STAMP" ]] && "$WRAPPER" --version >/dev/null 2>&1; then
  log "already installed: $("$WRAPPER" --version 2>&1) ($STAMP) at $WRAPPER"
  exit 0
fi

TMP=$(mktemp -d)
NEW=$DEST.new.$$
trap 'rm -rf "$TMP" "$NEW" "$WRAPPER.new.$$"' EXIT

log "downloading $STAMP"
reqs=$TMP/requirements.txt
if [[ $TRITONCLIENT_VERSION == 2.51.0 && $CUDART_VERSION == 12.6.77 ]]; then
  printf 'tritonclient==%s --hash=sha256:%s\nnvidia-cuda-runtime-cu12==%s --hash=sha256:%s\n' \
    "$TRITONCLIENT_VERSION" "$TRITONCLIENT_SHA256" "$CUDART_VERSION" "$CUDART_SHA256" >"$reqs"
else
  printf 'tritonclient==%s\nnvidia-cuda-runtime-cu12==%s\n' "$TRITONCLIENT_VERSION" "$CUDART_VERSION" >"$reqs"
fi
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -r "$reqs" -d "$TMP/wheels"

# Extract bin/perf_analyzer (and any shared library shipped beside it) and libcudart.so.12.
mkdir -p "$NEW/lib"
"$PY" - "$TMP/wheels" "$NEW" <<'EOF'
import pathlib
import shutil
import sys
import zipfile

wheels, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])


def extract(zf: zipfile.ZipFile, name: str, target: pathlib.Path) -> None:
    with zf.open(name) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    target.chmod(0o755)
    print(f"  {name} -> {target}", file=sys.stderr)


(triton,) = wheels.glob("tritonclient-*.whl")
with zipfile.ZipFile(triton) as zf:
    names = zf.namelist()
    binaries = [n for n in names if n.endswith("/bin/perf_analyzer")]
    if len(binaries) != 1:
        sys.exit(f"expected one bin/perf_analyzer in {triton.name}, found {binaries}")
    bindir = binaries[0].rsplit("/", 1)[0] + "/"
    extract(zf, binaries[0], out / "perf_analyzer")
    for n in names:
        if n.startswith(bindir) and ".so" in n.rsplit("/", 1)[1]:
            extract(zf, n, out / "lib" / n.rsplit("/", 1)[1])

(cudart,) = wheels.glob("nvidia_cuda_runtime_cu12-*.whl")
with zipfile.ZipFile(cudart) as zf:
    libs = [n for n in zf.namelist() if n.endswith("/lib/libcudart.so.12")]
    if len(libs) != 1:
        sys.exit(f"expected one lib/libcudart.so.12 in {cudart.name}, found {libs}")
    extract(zf, libs[0], out / "lib" / "libcudart.so.12")
EOF
printf '%s\n' "$STAMP" >"$NEW/STAMP"

check_libraries "$NEW"

rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$NEW" "$DEST"

cat >"$WRAPPER.new.$$" <<EOF
#!/bin/sh
# Triton perf_analyzer ($STAMP), installed by LMaaS .ci/install-perf-analyzer.sh.
dir=\$(dirname "\$(readlink -f "\$0")")/../libexec/perf_analyzer
LD_LIBRARY_PATH="\$dir/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
case "\${1:-}" in
  # perf_analyzer knows neither -h nor --help: it prints its usage after an error and exits 99.
  -h|--help) "\$dir/perf_analyzer" --help 2>&1 | sed '/unrecognized option/d'; exit 0 ;;
esac
exec "\$dir/perf_analyzer" "\$@"
EOF
chmod 755 "$WRAPPER.new.$$"
mv "$WRAPPER.new.$$" "$WRAPPER"

version=$("$WRAPPER" --version 2>&1) # perf_analyzer prints its version on stderr
"$WRAPPER" --help | grep -q -- '--concurrency-range' || {
  log "perf_analyzer --help did not print its usage"
  exit 1
}
log "installed: $version ($STAMP) at $WRAPPER"
