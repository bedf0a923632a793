#!/usr/bin/env bash
# Build and prove the wheels on an offline GPU host against the torch already installed there (issue 9).
#
# Prepared beforehand on a machine with network access (nothing is downloaded here):
#   .whl/                     wheels for this host's Python: nox and its dependencies, the build tools
#                             (constraints.txt versions) and the gpu tests' extras (mmengine, mmdet, mmpose, ...)
#   .cache/wheels/sources/    the pinned sdists (`python -m wheels build --list` shows the targets; the pipeline's
#                             source cache layout is <sha256[:2]>/<sha256>/<file>)
# Usage: bash bench/gpu_host.sh [TARGET ...]     (default: canary-system flash-attn-hdim128-system mmcv-system)
set -uo pipefail
cd "$(dirname "$0")/.."
log() { printf '[gpu-host] %s\n' "$*"; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(canary-system flash-attn-hdim128-system mmcv-system)

export UV_OFFLINE=1 UV_NO_INDEX=1 UV_FIND_LINKS="$PWD/.whl"
export WHEELS_SYSTEM_PYTHON="${WHEELS_SYSTEM_PYTHON:-$(command -v python3)}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PYTHONUNBUFFERED=1

# nox in a venv of its own: a PYTHONPATH would leak into every environment the pipeline isolates.
if [ ! -x .nox-host/bin/nox ]; then
  uv venv -q --python "$WHEELS_SYSTEM_PYTHON" .nox-host && uv pip install -q --python .nox-host/bin/python "nox[uv]" || exit 1
fi
log "torch: $("$WHEELS_SYSTEM_PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda)'); nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
status=0
for t in "${targets[@]}"; do
  start=$(date +%s)
  log "build $t"
  if .nox-host/bin/nox -s wheels -- "$t"; then
    log "built $t in $(( $(date +%s) - start ))s"
    .nox-host/bin/nox -s gpu_test -- --system-torch "$t" || status=1
  else
    log "build of $t failed after $(( $(date +%s) - start ))s"; status=1
  fi
done
log "done (status $status)"
exit $status
