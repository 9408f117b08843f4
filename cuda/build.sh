#!/usr/bin/env bash
# cuda/build.sh: compile redcompile's CUDA sources without needing a GPU.
#
#   cuda/build.sh --check        CI's check (the default): every kernel (.cu) compiled for sm_80
#                                and sm_90 with warnings as errors (nvcc, ptxas spills, host
#                                compiler), the C header compiled as C99, the torch binding .cpp
#                                files compiled against torch's headers, the generated schema
#                                header compared with the OpDefs, and the C++ schema library
#                                checked against the Python registration (load order, fakes).
#                                Exits non-zero on the first failure; prints what it compiled.
#   cuda/build.sh --lib DIR      also build DIR/libredcompile_kernels.a: the kernels alone, with
#                                their C interface, for TensorRT plugins or other hosts.
#
# Environment: NVCC (default nvcc), PYTHON (default: python, else python3), CUDA_HOME (default:
# found from nvcc), JOBS (parallel compiles, default nproc), CUDA_ARCHS (default "80 90").
# The torch library itself is built by redcompile.cuda.load_library() on a GPU machine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
mode="${1:---check}"
lib_dir="${2:-}"
case "$mode" in
    --check) ;;
    --lib) [ -n "$lib_dir" ] || { echo "usage: cuda/build.sh --lib DIR" >&2; exit 2; } ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "cuda/build.sh: unknown option '$mode' (use --check or --lib DIR)" >&2; exit 2 ;;
esac

NVCC="${NVCC:-nvcc}"
if [ -z "${PYTHON:-}" ]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
CUDA_ARCHS="${CUDA_ARCHS:-80 90}"
CXX="${CXX:-g++}"
CC="${CC:-gcc}"

command -v "$NVCC" >/dev/null 2>&1 || { echo "cuda/build.sh: nvcc not found (set NVCC)" >&2; exit 1; }
if [ -z "${CUDA_HOME:-}" ]; then
    # nvcc may be a wrapper script: ask it where its headers are instead of following links.
    CUDA_HOME="$("$NVCC" -v -E -x cu /dev/null -o /dev/null 2>&1 \
        | sed -n 's/^#\$ TOP=//p' | head -n 1)"
    [ -n "$CUDA_HOME" ] || CUDA_HOME="$(cd "$(dirname "$(command -v "$NVCC")")/.." && pwd)"
fi
[ -f "$CUDA_HOME/include/cuda_runtime_api.h" ] || {
    echo "cuda/build.sh: no cuda_runtime_api.h under CUDA_HOME=$CUDA_HOME (set CUDA_HOME)" >&2
    exit 1
}

gencode=()
for arch in $CUDA_ARCHS; do gencode+=("-gencode" "arch=compute_${arch},code=sm_${arch}"); done
# As strict as the compilers allow, with the half-precision defines torch's extension builds use
# (so code that relies on implicit __half conversions fails here, not on the GPU machine).
nvcc_flags=(
    -std=c++17 -O3 -lineinfo "${gencode[@]}"
    --Werror all-warnings
    -Xptxas -Werror,-warn-spills,-warn-lmem-usage
    -Xcompiler -Wall,-Wextra,-Werror
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
)

work="$(mktemp -d "${TMPDIR:-/tmp}/redcompile-cuda-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
step() { printf "%-64s" "$1"; }
pass() { echo "ok ($(( $(date +%s) - $1 ))s)"; }

# 1. Kernels: one nvcc per .cu, JOBS at a time; logs printed for failures.
mapfile -t kernels < <(cd "$here" && ls ./*.cu | sed 's|^\./||' | sort)
echo "nvcc: $("$NVCC" --version | tail -n 1); archs: $CUDA_ARCHS; jobs: $JOBS"
pids=()
names=()
failed=0
t0=$(date +%s)
for cu in "${kernels[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
    ( "$NVCC" "${nvcc_flags[@]}" -c "$here/$cu" -o "$work/${cu%.cu}.o" >"$work/$cu.log" 2>&1 ) &
    pids+=("$!")
    names+=("$cu")
done
for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
        echo "compiled cuda/${names[$i]} (sm: $CUDA_ARCHS)"
    else
        echo "FAILED  cuda/${names[$i]}:"
        cat "$work/${names[$i]}.log"
        failed=1
    fi
done
[ "$failed" -eq 0 ] || { echo "cuda/build.sh: kernel compilation failed" >&2; exit 1; }
echo "kernels: ${#kernels[@]} files in $(( $(date +%s) - t0 ))s"

if [ "$mode" = "--lib" ]; then
    mkdir -p "$lib_dir"
    ar rcs "$lib_dir/libredcompile_kernels.a" "$work"/*.o
    cp "$here/redcompile_kernels.h" "$lib_dir/"
    echo "wrote $lib_dir/libredcompile_kernels.a and redcompile_kernels.h"
    exit 0
fi

# 2. The C interface is plain C.
t0=$(date +%s)
step "compiled cuda/redcompile_kernels.h as C99"
"$CC" -fsyntax-only -x c -std=c99 -Wall -Wextra -Werror -pedantic -isystem "$CUDA_HOME/include" \
    "$here/redcompile_kernels.h"
pass "$t0"

# 3. Torch bindings against torch's headers (syntax only: a CPU torch has no CUDA libraries to
# link). The CPU wheel also lacks c10's generated cuda_cmake_macros.h, which only defines an
# export macro for Windows builds; C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips it.
mapfile -t torch_inc < <("$PYTHON" - <<'EOF'
import os
import torch
base = os.path.join(os.path.dirname(torch.__file__), "include")
print(base)
print(os.path.join(base, "torch", "csrc", "api", "include"))
EOF
) || { echo "cuda/build.sh: '$PYTHON' cannot import torch (activate the venv or set PYTHON)" >&2; exit 1; }
cxx_flags=(-std=c++17 -fsyntax-only -Wall -Wextra -Werror -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE
           -I "$here" -isystem "${torch_inc[0]}" -isystem "${torch_inc[1]}"
           -isystem "$CUDA_HOME/include")
for cpp in "$here"/*.cpp; do
    t0=$(date +%s)
    step "compiled cuda/$(basename "$cpp") against torch headers"
    "$CXX" "${cxx_flags[@]}" "$cpp"
    pass "$t0"
done

# 4. The generated schema header matches the OpDefs.
t0=$(date +%s)
step "checked cuda/torch_ops_generated.h against the OpDefs"
(cd "$repo" && "$PYTHON" "$here/gen_registrations.py" --check >/dev/null)
pass "$t0"

# 5. The C++ schema library (built for CPU) and the Python registration agree, in both orders.
t0=$(date +%s)
step "checked the C++ op schemas against the Python ops"
(cd "$repo" && REDCOMPILE_BUILD_CHECKS=1 "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/cuda/test_cuda_registration.py >"$work/registration.log" 2>&1) \
    || { echo "FAILED"; cat "$work/registration.log"; exit 1; }
pass "$t0"

echo "cuda/build.sh --check: all passed in $(( $(date +%s) - start ))s"
