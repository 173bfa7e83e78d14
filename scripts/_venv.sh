# Sourced by the set-up scripts: create (once) and activate ./.venv with Python >= 3.11.
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: rlmpipe needs Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
    exit 2
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
source .venv/bin/activate
# llama-cpp-python compiles llama.cpp; a build tuned to the build machine's CPU crashed with
# "Illegal instruction" on another, so build for a portable x86-64 feature set.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
export LITELLM_LOCAL_MODEL_COST_MAP=True
