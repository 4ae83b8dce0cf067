#!/usr/bin/env bash
# Create the Python venv used by make_reference.py: llama-cpp-python (compiled
# from source, CPU only), gguf and numpy, all pinned. Idempotent: re-running
# with everything already installed at the pinned versions does nothing.
#
#   scripts/reference/setup.sh            the portable build (AVX2/FMA/F16C, x86-64-v3): the
#                                         arithmetic rbee's kernels reproduce bit for bit
#   scripts/reference/setup.sh --native   llama.cpp built the way its README says
#                                         (GGML_NATIVE: this CPU's AVX-512/VNNI, OpenMP), into
#                                         its own venv, for speed comparisons
# Prints the venv's path on the last line.
set -euo pipefail
NATIVE=0
if [[ "${1:-}" == "--native" ]]; then
    NATIVE=1
fi

LLAMA_CPP_PYTHON_VERSION="0.3.36"
GGUF_VERSION="0.19.0"
NUMPY_VERSION="2.2.6"

CACHE_ROOT="${RBEE_CACHE_DIR:-$HOME/.cache/rbee}"
if [[ $NATIVE == 1 ]]; then
    VENV="${RBEE_REFERENCE_NATIVE_VENV:-$CACHE_ROOT/reference-venv-native}"
else
    VENV="${RBEE_REFERENCE_VENV:-$CACHE_ROOT/reference-venv}"
fi
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

# The native venv records the flags it was built with, so a change of them rebuilds it.
STAMP="$VENV/.rbee-build-flags"
# -march=native means "this CPU": a cache carried to another CPU (these VMs move between Intel
# and AMD hosts) is rebuilt, or it would die with SIGILL on an instruction set this one lacks.
CPU_ID="$(grep -m1 -E '^flags' /proc/cpuinfo 2>/dev/null | cksum | cut -d' ' -f1)"
FLAGS_ID="$LLAMA_CPP_PYTHON_VERSION native amx=off cpu=$CPU_ID"
stale=0
if [[ $NATIVE == 1 && "$(cat "$STAMP" 2>/dev/null)" != "$FLAGS_ID" ]]; then
    stale=1
fi
if [[ "$(installed_version llama_cpp_python)" != "$LLAMA_CPP_PYTHON_VERSION" || $stale == 1 ]]; then
    log "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION from source (several minutes)"
    # Portable CPU build: no -march=native so results do not depend on the
    # build host's newest ISA extensions; AVX2/FMA/F16C are baseline x86-64-v3.
    # LLAVA_BUILD=OFF skips the multimodal (mtmd) library, which is not needed.
    if [[ $NATIVE == 1 ]]; then
        # What a user gets from llama.cpp's README (GGML_NATIVE: -march=native, every
        # instruction set this CPU has, OpenMP on), with one exception: some of these VMs
        # report AMX, but the hypervisor faults on its first tile instruction (ldtilecfg, a
        # general protection fault in ggml_backend_amx_mul_mat), so AMX is switched off.
        # (Naming the sets one by one instead, as this script did, enabled AVX-VNNI on AMD
        # hosts that lack it: SIGILL.)
        NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        NATIVE_ISA="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
        export CMAKE_ARGS="${CMAKE_ARGS:-$NATIVE_ISA -DLLAMA_CURL=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAVA_BUILD=OFF}"
    else
        export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAVA_BUILD=OFF}"
    fi
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
    export FORCE_CMAKE=1
    "${PIP[@]}" install --force-reinstall --no-binary llama-cpp-python --no-cache-dir "numpy==$NUMPY_VERSION" \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    if [[ $NATIVE == 1 ]]; then
        echo "$FLAGS_ID" > "$STAMP"
    fi
fi

"$PY" -c "import llama_cpp, gguf, numpy; print('llama_cpp', llama_cpp.__version__, 'numpy', numpy.__version__)" >&2
echo "$VENV"
