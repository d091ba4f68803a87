#!/bin/sh
# MLOF meta-inference with the quick CPU recipe: adapts the shipped mlof/checkpoints/mlof_default.pt on the clip
# bundled with the package and prints the EPE before and after adaptation. Extra arguments pass through to
# `mlof adapt`, e.g. `model.checkpoint=runs/quick_meta_train/checkpoints/latest.pt` (your meta-trained
# weights), `input=path/to/frames_or_video pairs=null`, `online=true`.
# Outputs: runs/quick_meta_inference/ (flows/, flows_before/, images/*_panel.png, metrics.json, TensorBoard
# events). Running it again needs --overwrite, --resume or another name=.
set -e
cd "$(dirname "$0")/.."
. bash/_env.sh
mlof_install ""
exec "$PY" -m mlof.cli adapt --config recipes/quick_meta_inference.yaml "$@"
