#!/bin/sh
# MLOF meta-training with the quick CPU recipe; extra arguments pass through to `mlof meta-train`.
# theta_0 = runs/quick_pretrain/checkpoints/latest.pt when `sh bash/pretrain.sh` has run, else the shipped
# mlof/checkpoints/mlof_default.pt (an explicit model.checkpoint=... argument wins).
# Outputs: runs/quick_meta_train/ (checkpoints/latest.pt = theta_ml, TensorBoard events, metrics.json).
set -e
cd "$(dirname "$0")/.."
. bash/_env.sh
mlof_install ""
init="runs/quick_pretrain/checkpoints/latest.pt"
if [ -f "$init" ]; then
    echo "meta_train.sh: theta_0 = $init (from bash/pretrain.sh)"
    exec "$PY" -m mlof.cli meta-train --config recipes/quick_meta_train.yaml "model.checkpoint=$init" "$@"
fi
echo "meta_train.sh: theta_0 = mlof/checkpoints/mlof_default.pt (run bash/pretrain.sh first to start from your own)"
exec "$PY" -m mlof.cli meta-train --config recipes/quick_meta_train.yaml "$@"
