#!/bin/sh
# Supervised pretraining (theta_0) with the quick CPU recipe; extra arguments pass through to `mlof pretrain`,
# e.g. `sh bash/pretrain.sh steps=200`, `sh bash/pretrain.sh --config recipes/pretrain_chairs.yaml`,
# `sh bash/pretrain.sh --resume`. Outputs: runs/quick_pretrain/ (checkpoints/latest.pt, TensorBoard events).
set -e
cd "$(dirname "$0")/.."
. bash/_env.sh
mlof_install ""
exec "$PY" -m mlof.cli pretrain --config recipes/quick_pretrain.yaml "$@"
