#!/usr/bin/env bash
# Create the Python venv used by make_reference.py: llama-cpp-python (compiled
# from source, CPU only), gguf and numpy, all pinned. Idempotent: re-running
# with everything already installed at the pinned versions does nothing.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
GGUF_VERSION="0.19.0"
NUMPY_VERSION="2.2.6"

CACHE_ROOT="${RBEE_CACHE_DIR:-$HOME/.cache/rbee}"
VENV="${RBEE_REFERENCE_VENV:-$CACHE_ROOT/reference-venv}"
PY="$VENV/bin/python"

log() { echo "[reference/setup] $*" >&2; }

installed_version() {
    "$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: print('')" "$1" 2>/dev/null || true
}

if [[ ! -x "$PY" ]]; then
    log "creating venv at $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
fi

PIP=("$PY" -m pip --disable-pip-version-check -q)

if [[ "$(installed_version numpy)" != "$NUMPY_VERSION" || "$(installed_version gguf)" != "$GGUF_VERSION" ]]; then
    log "installing numpy==$NUMPY_VERSION gguf==$GGUF_VERSION"
    "${PIP[@]}" install "numpy==$NUMPY_VERSION" "gguf==$GGUF_VERSION"
fi

if [[ "$(installed_version llama_cpp_python)" != "$LLAMA_CPP_PYTHON_VERSION" ]]; then
    log "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION from source (several minutes)"
    # Portable CPU build: no -march=native so results do not depend on the
    # build host's newest ISA extensions; AVX2/FMA/F16C are baseline x86-64-v3.
    # LLAVA_BUILD=OFF skips the multimodal (mtmd) library, which is not needed.
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAVA_BUILD=OFF}"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
    export FORCE_CMAKE=1
    "${PIP[@]}" install --no-binary llama-cpp-python --no-cache-dir \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi

"$PY" -c "import llama_cpp, gguf, numpy; print('llama_cpp', llama_cpp.__version__, 'numpy', numpy.__version__)" >&2
echo "$VENV"
