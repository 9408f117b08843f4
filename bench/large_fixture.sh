#!/usr/bin/env bash
# bench/large_fixture.sh: a ~100M-parameter pycode-lm, its drafter, and its end-to-end CPU speed.
#
#   bench/large_fixture.sh PATH/pycode-lm WORK [STAGE ...]    stages: corpus base drafter bench
#                                                             (default: all, in that order)
#
# The 5M fixture is too small for a decoding step to be memory-bound, so its end-to-end speedup
# says little about real models. On the GPU machine this trains a larger one on the same corpus
# with the same tokenizer and measures ReDrafter against autoregressive decoding in ONNX Runtime
# on that machine's CPU:
#   corpus   bench/build_corpus.py -> WORK/corpus.jsonl (the fixture's files, this Python's stdlib)
#   base     bench/train_base_lm.py (107M, 2000 steps of 32 x 512 tokens, bf16 on the GPU)
#            -> WORK/pycode-lm-100m, $OUT_DIR/pycode100m_base_train.json
#   drafter  redcompile train-drafter --self-distill (default settings) on the GPU
#            -> WORK/drafter-100m, $OUT_DIR/pycode100m_train.json
#   bench    redcompile bench in ONNX Runtime on the CPU, dev prompts, 128 new tokens, W1-L4 and
#            W4-L5 with the int8 drafter at batch 1, then batch 8
#            -> $OUT_DIR/pycode100m_speed_b1.json, pycode100m_speed_b8.json
# Each stage is meant to fit one 10-minute call of the GPU machine (not yet measured there);
# WORK must outlive the calls (e.g. /tmp on a machine kept warm between them).
# The GPU machine lacks onnx-graphsurgeon, which redcompile's compiler imports: bring its wheel
# (tools' device README, "a Python package missing there") and install it before `drafter`.
#
# Environment (for a small trial anywhere): OUT_DIR (default bench/results), DEVICE (default cuda
# when torch sees one), SIZE (100m), BASE_STEPS (2000), BASE_FLAGS, DRAFTER_FLAGS, BENCH_FLAGS
# (extra flags for the three commands), PYTHON (python3).
set -euo pipefail
FIXTURE=$(realpath "${1:?usage: bench/large_fixture.sh PATH/pycode-lm WORK [STAGE ...]}")
WORK=$(realpath -m "${2:?usage: bench/large_fixture.sh PATH/pycode-lm WORK [STAGE ...]}")
shift 2
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT_DIR=$(realpath -m "${OUT_DIR:-bench/results}")
DEVICE="${DEVICE:-$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
SIZE="${SIZE:-100m}"
MODEL="$WORK/pycode-lm-$SIZE"
DRAFTER="$WORK/drafter-$SIZE"
stages=("$@")
[ "${#stages[@]}" -gt 0 ] || stages=(corpus base drafter bench)
mkdir -p "$WORK" "$OUT_DIR"
export PYTHONUNBUFFERED=1

for stage in "${stages[@]}"; do
    echo "=== $stage ($(date -u +%H:%M:%S))"
    case "$stage" in
        corpus)
            "$PYTHON" bench/build_corpus.py --fixture "$FIXTURE" --out "$WORK/corpus.jsonl"
            ;;
        base)
            # shellcheck disable=SC2086
            "$PYTHON" bench/train_base_lm.py --fixture "$FIXTURE" --data "$WORK/corpus.jsonl" \
                --out "$MODEL" --size "$SIZE" --steps "${BASE_STEPS:-2000}" --device "$DEVICE" \
                --quiet ${BASE_FLAGS:-}
            cp "$MODEL/TRAINING.json" "$OUT_DIR/pycode${SIZE}_base_train.json"
            ;;
        drafter)
            # shellcheck disable=SC2086
            redcompile train-drafter "$MODEL" --data "$WORK/corpus.jsonl" --out "$DRAFTER" \
                --self-distill --device "$DEVICE" --json ${DRAFTER_FLAGS:-} \
                > "$OUT_DIR/pycode${SIZE}_train.json"
            ;;
        bench)
            for batch in 1 8; do
                # shellcheck disable=SC2086
                redcompile bench "$MODEL" --drafter "$DRAFTER" --work-dir "$WORK/artifacts" \
                    --prompts-file "$MODEL/dev_prompts.jsonl" --beam-width 1,4 \
                    --beam-length 4,5 --drafter-weights int8 --batch-size "$batch" \
                    --repeats 2 --max-new-tokens 128 ${BENCH_FLAGS:-} \
                    --json "$OUT_DIR/pycode${SIZE}_speed_b$batch.json"
            done
            ;;
        *)
            echo "large_fixture.sh: unknown stage '$stage' (corpus base drafter bench)" >&2
            exit 2
            ;;
    esac
done
