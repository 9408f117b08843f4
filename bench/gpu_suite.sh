#!/usr/bin/env bash
# bench/gpu_suite.sh: everything the CUDA kernels need on a GPU machine, in one command.
#
#   bench/gpu_suite.sh [STAGE ...]       stages: install build test sanitize bench cost
#                                        (default: all but cost)
#
# Run from anywhere on a machine with an NVIDIA GPU, nvcc and torch (torch is used as installed:
# redcompile is installed with --no-deps, so its torch pin does not apply). Stages:
#   install   pip install -e . --no-deps (or, without pip/setuptools, a PYTHONPATH shim)
#   build     cuda/build.sh --check (sm_80 + sm_90), then build and load the torch library
#   test      pytest tests/cuda: every kernel against its reference op
#   sanitize  compute-sanitizer memcheck over the kernel tests (the "long" ones left out), then
#             racecheck and synccheck over a smaller selection
#   bench     bench/gpu_kernels.py -> $OUT_DIR/gpu_kernels.json
#   cost      tests/bench (a CUDA graph replay against the eager step), then the cost study at
#             Llama-7B shapes, fp16, in PyTorch: steps replayed from CUDA graphs
#             (cost_study_7b_fp16_gpu.json; Apple's drafter and a hidden-wide one, whole and 8000
#             token draft vocabularies, W1-W16), then a few of them eagerly, to show what the
#             host's kernel launches cost (cost_study_7b_fp16_eager_gpu.json); a few minutes
# Each stage stays well under 10 minutes on an H100, so stages can also go in separate calls.
# Every stage runs even when an earlier one failed; the exit status is non-zero if any failed.
# Output: $OUT_DIR (default bench/results) gets gpu_kernels.json, gpu_suite.log (everything
# printed) and gpu_suite_summary.txt (one line per stage).
#
# Environment: OUT_DIR, PYTHON (default python3), REDCOMPILE_CUDA_BUILD_DIR (default
# /tmp/redcompile-cuda-build: the torch library build, reused by later stages),
# SANITIZE_SELECT / RACECHECK_SELECT (pytest -k expressions).
set -uo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT_DIR:-$repo/bench/results}"
mkdir -p "$OUT_DIR"
export REDCOMPILE_CUDA_BUILD_DIR="${REDCOMPILE_CUDA_BUILD_DIR:-/tmp/redcompile-cuda-build}"
export PYTHONUNBUFFERED=1
SANITIZE_SELECT="${SANITIZE_SELECT:-not long and not 32000 and not 151936}"
RACECHECK_SELECT="${RACECHECK_SELECT:-((tree_attention_matches or strided) and (tiny or gqa_ragged or d72 or d256 or misaligned) and not bfloat16) or (beam_select_matches and b3w4) or build_tree or ancestor or kv_compaction or (accept_matches and float32 and 100 and 5)}"
# Fixture acceptance the cost study projects with: float drafters of Apple's width and of the
# hidden size (e256), whole vocabulary and a quarter of it (draft_vocab 1024 of 4096).
COST_RECORDS=(bench/results/pycode_shapes_d8192.json bench/results/pycode_shapes_e256.json
    bench/results/pycode_draft_vocab.json bench/results/pycode_draft_vocab_e256.json)
log="$OUT_DIR/gpu_suite.log"
summary="$OUT_DIR/gpu_suite_summary.txt"
stages=("$@")
[ "${#stages[@]}" -gt 0 ] || stages=(install build test sanitize bench)
failed=0

run_stage() {  # run_stage NAME COMMAND...: log output, record status and time
    local name="$1"
    shift
    local t0
    t0=$(date +%s)
    echo "=== $name: $*" | tee -a "$log"
    if "$@" 2>&1 | tee -a "$log"; then
        echo "$name: ok ($(( $(date +%s) - t0 ))s)" | tee -a "$summary"
    else
        echo "$name: FAILED ($(( $(date +%s) - t0 ))s)" | tee -a "$summary"
        failed=1
    fi
}

install_redcompile() {
    if "$PYTHON" -c "import redcompile.ops, redcompile.cuda" 2>/dev/null; then
        echo "redcompile already importable"
        return 0
    fi
    if "$PYTHON" -m pip install -q -e . --no-deps --no-build-isolation; then
        return 0
    fi
    # No pip/setuptools: mirror the package layout (pyproject's package-dir) with links.
    local shim=/tmp/redcompile-shim
    rm -rf "$shim" && mkdir -p "$shim/redcompile"
    ln -s "$repo"/redcompile/* "$shim/redcompile/"
    for sub in ops models passes cuda; do ln -s "$repo/$sub" "$shim/redcompile/$sub"; done
    echo "export PYTHONPATH=$shim" > /tmp/redcompile-shim.env
    echo "installed a PYTHONPATH shim at $shim"
}

load_library() {
    "$PYTHON" - <<'EOF'
import time
t0 = time.time()
from redcompile import cuda
print("built and loaded", cuda.load_library(verbose=False), f"in {time.time() - t0:.0f}s")
EOF
}

sanitize() {
    local status=0
    # One cudaMalloc per tensor, so memcheck sees the real bounds of every buffer.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
        --print-limit 20 "$PYTHON" -m pytest -q -p no:cacheprovider tests/cuda/test_cuda_kernels.py \
        -k "$SANITIZE_SELECT" || status=1
    for tool in racecheck synccheck; do
        compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 \
            "$PYTHON" -m pytest -q -p no:cacheprovider tests/cuda/test_cuda_kernels.py \
            -k "$RACECHECK_SELECT" || status=1
    done
    return "$status"
}

[ -f /tmp/redcompile-shim.env ] && . /tmp/redcompile-shim.env
{
    echo "gpu_suite: $(date -u +%Y-%m-%dT%H:%M:%SZ) stages: ${stages[*]}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    nvcc --version | tail -n 1
} 2>&1 | tee -a "$log"

for stage in "${stages[@]}"; do
    case "$stage" in
        install)
            run_stage install install_redcompile
            [ -f /tmp/redcompile-shim.env ] && . /tmp/redcompile-shim.env
            ;;
        build)
            run_stage build-check cuda/build.sh --check
            run_stage build-torch-library load_library
            ;;
        test)
            run_stage test "$PYTHON" -m pytest -q -p no:cacheprovider tests/cuda -rs
            ;;
        sanitize)
            run_stage sanitize sanitize
            ;;
        bench)
            run_stage bench "$PYTHON" bench/gpu_kernels.py --out "$OUT_DIR/gpu_kernels.json"
            ;;
        cost)
            run_stage cost-test "$PYTHON" -m pytest -q -p no:cacheprovider tests/bench -rs
            run_stage cost-graphs "$PYTHON" bench/cost_study.py --runtime torch --device cuda \
                --dtype float16 --size 7b --beams 1x4,1x5,2x5,4x5,8x5,16x5 --layers 4 \
                --exit-dim default,4096 --draft-vocab 8000 --shapes-record "${COST_RECORDS[@]}" \
                --out "$OUT_DIR/cost_study_7b_fp16_gpu.json"
            run_stage cost-eager "$PYTHON" bench/cost_study.py --runtime torch --device cuda \
                --dtype float16 --size 7b --beams 1x4,16x5 --layers 4 --no-cuda-graphs \
                --shapes-record "${COST_RECORDS[@]}" --out "$OUT_DIR/cost_study_7b_fp16_eager_gpu.json"
            ;;
        *)
            echo "gpu_suite.sh: unknown stage '$stage' (install build test sanitize bench cost)" >&2
            failed=1
            ;;
    esac
done

echo "--- summary ($summary)"
cat "$summary"
exit "$failed"
