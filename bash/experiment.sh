#!/bin/sh
# MLOF's six-column experiment (theta0, theta0*, ft, ft*, ml, ml*) with the CPU default recipe; extra arguments
# pass through to `mlof experiment` (e.g. --config recipes/experiment_kitti15.yaml data.root=...).
# Outputs: runs/experiment_cpu/ (table.md, table.csv, results.json, plot.png, one run folder per part).
# Interrupted? Run it again with --resume: finished parts are kept.
set -e
cd "$(dirname "$0")/.."
. bash/_env.sh
mlof_install ""
exec "$PY" -m mlof.cli experiment --config recipes/experiment_cpu.yaml "$@"
