# Sourced by test.sh after the install: make sure llama-cpp-python is the portable build _venv.sh asks for.
# pip's wheel cache does not tell builds with different CMAKE_ARGS apart, so a wheel built earlier for
# this CPU's own features (AVX-512, AMX) is reused as is -- and such a build crashed here with SIGSEGV
# in its first decode. The library reports the features it was compiled with; rebuild if they are not
# the portable set (4-12 minutes on 2 cores, once: the rebuilt wheel replaces the cached one).
if [[ "${CMAKE_ARGS:-}" == *GGML_NATIVE=OFF* ]] && python - <<'PY'
import sys
try:
    import llama_cpp
except ImportError:
    sys.exit(1)
info = llama_cpp.llama_print_system_info().decode()
sys.exit(0 if ("AVX512 = 1" in info or "AMX_INT8 = 1" in info) else 1)
PY
then
    version="$(python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
    echo "note: llama-cpp-python $version was built for this CPU's own features, not portably; rebuilding it" >&2
    pip cache remove llama_cpp_python >/dev/null 2>&1 || true
    pip install --quiet --quiet --force-reinstall --no-deps "llama-cpp-python==$version"
fi
