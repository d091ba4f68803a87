#!/bin/sh
# Installs what is missing (CPU torch 2.13.0 first, then mlof with its test and export extras) and runs the fast
# tests (the ONNX export tests need the export extra: onnx, onnxruntime).
# Extra arguments go to pytest, e.g. `sh bash/test.sh -m slow` or `sh bash/test.sh tests/test_io.py`.
set -e
cd "$(dirname "$0")/.."
. bash/_env.sh
mlof_install test,export
# The tests use tiny tensors: one intra-op thread is faster than two fighting over two cores, and
# keeps timings steady on a loaded machine. Set OMP_NUM_THREADS yourself to override.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
set +e
"$PY" -m pytest "$@"
rc=$?
# pytest exits 5 when no test was collected: that is not a failure of the code under test.
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi
exit $rc
