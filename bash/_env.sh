# Shared by the bash/ entry points: pick Python and install what is missing, once.
# PYTHON overrides the interpreter; MLOF_NO_INSTALL=1 skips installing.
PY="${PYTHON:-python3}"
mlof_install() {
    extra="$1"
    [ "${MLOF_NO_INSTALL:-0}" = "1" ] && return 0
    # torch first, pinned, so that no dependency pulls a different (CUDA) build.
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
        "$PY" -m pip install -q torch==2.13.0
    fi
    want=".[${extra}]"
    [ -z "$extra" ] && want="."
    if ! "$PY" -c "import mlof, backbones, omegaconf, cv2, tqdm, tensorboard" >/dev/null 2>&1 \
       || { [ "$extra" = "test" ] && ! "$PY" -c "import pytest" >/dev/null 2>&1; } \
       || [ "$("$PY" -c 'import mlof,os;print(os.path.dirname(os.path.dirname(mlof.__file__)))' 2>/dev/null)" != "$(pwd)" ]; then
        "$PY" -m pip install -q -e "$want"
    fi
}
