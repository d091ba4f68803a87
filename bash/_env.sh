# Shared by the bash/ entry points: pick Python and install what is missing, once.
# PYTHON overrides the interpreter; MLOF_NO_INSTALL=1 skips installing.
PY="${PYTHON:-python3}"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

_mlof_missing() {
    # exits 0 when something is missing (the mlof distribution itself, or an import of its dependencies)
    "$PY" - "$1" <<'PYEOF'
import importlib.metadata as md, importlib.util, sys
mods = ["torch", "numpy", "scipy", "yaml", "omegaconf", "tensorboard", "tqdm", "cv2"]
if "test" in sys.argv[1].split(","):
    mods.append("pytest")
if "export" in sys.argv[1].split(","):
    mods += ["onnx", "onnxruntime"]
missing = [m for m in mods if importlib.util.find_spec(m) is None]
try:
    md.distribution("mlof")
except md.PackageNotFoundError:
    missing.append("mlof")
sys.exit(0 if missing else 1)
PYEOF
}

mlof_install() {
    [ "${MLOF_NO_INSTALL:-0}" = "1" ] && return 0
    if ! "$PY" -c "import sys; sys.exit(sys.version_info < (3, 10))"; then
        echo "mlof needs Python >= 3.10 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.10+" >&2
        exit 1
    fi
    _mlof_missing "$1" || return 0
    # torch first, pinned: the CPU build 2.13.0; nothing later may pull a different (CUDA) build.
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
        echo "[mlof] installing torch==2.13.0" >&2
        "$PY" -m pip install -q torch==2.13.0
    fi
    if [ -n "$1" ]; then want=".[$1]"; else want="."; fi
    echo "[mlof] installing mlof ($want) and its dependencies" >&2
    "$PY" -m pip install -q -e "$want"
}
