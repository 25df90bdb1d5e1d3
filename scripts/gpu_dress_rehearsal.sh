#!/usr/bin/env bash
# CPU dress rehearsal of the GPU machine's offline bootstrap (benchmarks/gpu_check.py, "Bootstrap").
#
#   scripts/gpu_dress_rehearsal.sh BUNDLE OUT [more benchmarks.gpu_check arguments]
#
# BUNDLE: a folder built by `python -m benchmarks.gpu_check --prepare BUNDLE`. In a fresh virtual
# environment (no system site-packages) that holds only a stand-in for the GPU image -- the distributions of
# this project's environment that the image has (benchmarks.gpu_bundle.IMAGE_PACKAGES), linked in -- it runs
# the GPU-side command with --cpu-smoke: `python3 -m benchmarks.gpu_check --bundle BUNDLE --cpu-smoke --out OUT`,
# which installs the rest from BUNDLE with pip --no-index (pip's configuration and PIP_* variables off),
# checks versions and imports, then runs every part on the CPU. The steps' logs go to a temporary folder,
# the results only to OUT. PYTHON (default: .venv/bin/python) is the environment the stand-in is taken from.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 BUNDLE OUT [benchmarks.gpu_check arguments]" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=$(cd "$1" && pwd)
out=$2
shift 2
python=${PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-rehearsal-XXXXXX")
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"  # ensurepip: pip from the interpreter's own wheel, offline
site=$("$work/venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
(cd "$root" && "$python" -m benchmarks.gpu_bundle standin "$site")

cd "$root"
env -u PYTHONPATH -u VIRTUAL_ENV "$work/venv/bin/python3" -m benchmarks.gpu_check --bundle "$bundle" --cpu-smoke \
    --out "$out" --logs "$work/logs" "$@"
