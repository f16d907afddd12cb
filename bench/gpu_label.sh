#!/usr/bin/env bash
# Labelling speed on one GPU in one short run (bench/gpu_label.py): (a) the bare UNet-ResNet34 at
# 512x1024 over batch sizes, eager, cudnn.benchmark and torch.compile; (b) the Predictor's path from
# 1024x2048 JPEG bytes to masks and class counts, CPU and GPU decode; (c) the whole job (Ray where it
# can be imported, else the job's stages in threads). Prints one markdown table, writes it as JSON.
#
#   bash bench/gpu_label.sh [--out FILE] [--tiny] [any other bench/gpu_label.py option]
#
# Python: $PYTHON, else the checkout's .venv, else python3. When bench/gpu-bundle exists (made by
# bench/gpu_bundle.sh; or $SEGRAY_GPU_BUNDLE), its wheels supply whatever this Python lacks
# (segmentation-models-pytorch and its dependencies), unpacked into a folder under /tmp: no network.
# Sized to end within 8 minutes on a GPU: stages that would start late in --budget-s (400 s) are skipped.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x "$HERE/.venv/bin/python" ]; then
  PY=$HERE/.venv/bin/python
else
  PY=python3
fi
ARGS=()
BUNDLE=${SEGRAY_GPU_BUNDLE:-$HERE/bench/gpu-bundle}
[ -d "$BUNDLE" ] && ARGS+=(--bundle "$BUNDLE")
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi -L >&2 || true
exec "$PY" "$HERE/bench/gpu_label.py" ${ARGS[@]+"${ARGS[@]}"} "$@"
