#!/usr/bin/env bash
# Create .venv with pinned torch, pinned runtime dependencies, fairseq built from a
# hash-checked source release, and this package in editable mode.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
FAIRSEQ_DIST="fairseq-fixed"
FAIRSEQ_VERSION="0.12.3.1"
FAIRSEQ_SHA256="c607577a54ab30e2ee0f0b0a754ea5cdbc6ad0a9f99a1726638a2201445bc1cc"

die() { echo "install: error: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found; install Python 3.11 or set PYTHON=/path/to/python3"
"$PYTHON" - <<'PY' || die "Python 3.11 is required (fairseq and torch wheels, Snakemake 9); set PYTHON=/path/to/python3.11"
import sys
sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY
command -v "${CXX:-g++}" >/dev/null || die "no C++ compiler ('${CXX:-g++}'): fairseq's extensions are built from source; install one (Debian: apt-get install build-essential)"
"$PYTHON" -c "import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 1)" \
  || die "Python headers (Python.h) missing; install them (Debian: apt-get install python3-dev)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "install: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "install: torch==$TORCH_VERSION"
"${PIP[@]}" install -q "torch==$TORCH_VERSION"
echo "install: runtime dependencies (requirements.txt)"
"${PIP[@]}" install -q -r requirements.txt

if ! "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "install: fetching $FAIRSEQ_DIST==$FAIRSEQ_VERSION source release"
  "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: -d "$tmp" "$FAIRSEQ_DIST==$FAIRSEQ_VERSION"
  sdist="$(ls "$tmp"/*.tar.gz)"
  echo "$FAIRSEQ_SHA256  $sdist" | sha256sum -c --quiet - \
    || die "sha256 of $sdist does not match $FAIRSEQ_SHA256; refusing to build it"
  echo "install: building fairseq from source (about 3 minutes on 2 cores)"
  MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" install -q --no-cache-dir --no-deps --no-build-isolation "$sdist"
fi

echo "install: fairseq-seqkd (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import fairseq, torch, fairseq_seqkd; print('install: ok: torch', torch.__version__, 'fairseq', fairseq.__version__)"
