#!/usr/bin/env bash
# The pycode-lm benchmark: train a self-distilled drafter on the fixture's training files,
# sweep beam shapes for tokens per step, then measure ReDrafter against the autoregressive
# artifact in ONNX Runtime on CPU. Results go to bench/results/, plots to docs/.
#
#   bench/pycode_recipe.sh PATH/pycode-lm WORK_DIR
set -euo pipefail
FIXTURE=${1:?usage: bench/pycode_recipe.sh PATH/pycode-lm WORK_DIR}
WORK=${2:?usage: bench/pycode_recipe.sh PATH/pycode-lm WORK_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$WORK" bench/results

python bench/fixtures/build_corpus.py --fixture "$FIXTURE" --out "$WORK/corpus.jsonl"

# 1. Drafter: Apple's recipe with self-distillation, default settings (timed).
start=$(date +%s)
redcompile train-drafter "$FIXTURE" --data "$WORK/corpus.jsonl" --out "$WORK/drafter" \
    --self-distill --json > bench/results/pycode_train.json
echo "train-drafter: $(( $(date +%s) - start )) s wall" | tee bench/results/pycode_train_wall.txt

# 2. Tokens per step for every beam shape (greedy, dev prompts, 128 new tokens).
redcompile bench "$FIXTURE" --drafter "$WORK/drafter" --work-dir "$WORK/artifacts" \
    --prompts-file "$FIXTURE/dev_prompts.jsonl" --beam-width 1,2,4,8,16 --beam-length 3,4,5 \
    --batch-size 8 --repeats 1 --max-new-tokens 128 \
    --json bench/results/pycode_shapes.json --plot docs/pycode_shapes.png

# 3. End-to-end speed in ONNX Runtime (CPU), batch 1 and 8, medians of 3 alternating rounds.
redcompile bench "$FIXTURE" --drafter "$WORK/drafter" --work-dir "$WORK/artifacts" \
    --prompts-file "$FIXTURE/dev_prompts.jsonl" --beam-width 1,4 --beam-length 3,5 \
    --batch-size 1,8 --repeats 3 --max-new-tokens 128 \
    --json bench/results/pycode_speed.json --plot docs/pycode_speed.png

# 4. Tokens per step when drafting from the 512 or 1024 most frequent of the 4096 tokens
#    (--draft-vocab; the fractions the cost study projects 4000 and 8000 of 32000 with).
redcompile bench "$FIXTURE" --drafter "$WORK/drafter" --work-dir "$WORK/artifacts" \
    --prompts-file "$FIXTURE/dev_prompts.jsonl" --beam-width 1,2,4 --beam-length 3,5 \
    --draft-vocab 512,1024 --batch-size 8 --repeats 1 --max-new-tokens 128 \
    --json bench/results/pycode_draft_vocab.json

# 5. A narrow drafter for CPU-sized models (exit_dim = hidden instead of 2 x hidden), whose
#    acceptance the cost study pairs with drafters of the same relative shape (--exit-dim).
redcompile train-drafter "$FIXTURE" --data "$WORK/corpus.jsonl" --out "$WORK/drafter-e256" \
    --self-distill --exit-dim 256 --json > bench/results/pycode_train_e256.json
redcompile bench "$FIXTURE" --drafter "$WORK/drafter-e256" --work-dir "$WORK/artifacts-e256" \
    --prompts-file "$FIXTURE/dev_prompts.jsonl" --beam-width 1,2 --beam-length 3,5 \
    --batch-size 8 --repeats 1 --max-new-tokens 128 --json bench/results/pycode_shapes_e256.json
redcompile bench "$FIXTURE" --drafter "$WORK/drafter-e256" --work-dir "$WORK/artifacts-e256" \
    --prompts-file "$FIXTURE/dev_prompts.jsonl" --beam-width 1,2 --beam-length 3,5 \
    --draft-vocab 512,1024 --batch-size 8 --repeats 1 --max-new-tokens 128 \
    --json bench/results/pycode_draft_vocab_e256.json

# 6. Both drafters with quantized weights (--drafter-weights): tokens per step and speed at
#    batch 1, the acceptance the cost study pairs with quantized drafters of the same shape.
for format in int8 int4; do
    redcompile bench "$FIXTURE" --drafter "$WORK/drafter" --work-dir "$WORK/artifacts" \
        --drafter-weights "$format" --prompts-file "$FIXTURE/dev_prompts.jsonl" \
        --beam-width 1,2 --beam-length 3,5 --batch-size 1 --repeats 3 --max-new-tokens 128 \
        --json "bench/results/pycode_$format.json"
    redcompile bench "$FIXTURE" --drafter "$WORK/drafter-e256" --work-dir "$WORK/artifacts-e256" \
        --drafter-weights "$format" --prompts-file "$FIXTURE/dev_prompts.jsonl" \
        --beam-width 1,2 --beam-length 3,5 --batch-size 1 --repeats 3 --max-new-tokens 128 \
        --json "bench/results/pycode_e256_$format.json"
done

# 7. Tokens per step of single chains, L = 3, 4, 5, with int4 weights: the narrowest beams,
#    which the cost study projects (`cost_study.py --beams 1x3,1x4,1x5`).
for drafter in drafter drafter-e256; do
    name=${drafter#drafter}; name=${name#-}
    redcompile bench "$FIXTURE" --drafter "$WORK/$drafter" --work-dir "$WORK/artifacts${name:+-$name}" \
        --drafter-weights int4 --prompts-file "$FIXTURE/dev_prompts.jsonl" \
        --beam-width 1 --beam-length 3,4,5 --batch-size 8 --repeats 1 --max-new-tokens 128 \
        --json "bench/results/pycode_${name:+${name}_}int4_w1.json"
done
# ... and the same chains end to end with int8 weights at batch 1 (speed, 3 alternating rounds).
redcompile bench "$FIXTURE" --drafter "$WORK/drafter" --work-dir "$WORK/artifacts" \
    --drafter-weights int8 --prompts-file "$FIXTURE/dev_prompts.jsonl" \
    --beam-width 1 --beam-length 3,4,5 --batch-size 1 --repeats 3 --max-new-tokens 128 \
    --json bench/results/pycode_int8_w1_b1.json

# 8. The same single chains on a second, disjoint prompt set: one function opening from each
#    held-out file that is not a dev prompt's source (bench/fixtures/build_prompts.py wrote
#    bench/fixtures/held_out_prompts.jsonl from this Python's stdlib), then tokens per step by
#    the kind of file each prompt came from (codec modules, tests, library), on both prompt sets.
for drafter in drafter drafter-e256; do
    name=${drafter#drafter}; name=${name#-}
    redcompile bench "$FIXTURE" --drafter "$WORK/$drafter" --work-dir "$WORK/artifacts${name:+-$name}" \
        --drafter-weights int4 --prompts-file bench/fixtures/held_out_prompts.jsonl \
        --beam-width 1 --beam-length 3,4,5 --batch-size 8 --repeats 1 --max-new-tokens 128 \
        --json "bench/results/pycode_${name:+${name}_}int4_w1_held_out.json"
done
redcompile bench "$FIXTURE" --drafter "$WORK/drafter" --work-dir "$WORK/artifacts" \
    --prompts-file bench/fixtures/held_out_prompts.jsonl --beam-width 1,16 --beam-length 4,5 \
    --batch-size 8 --repeats 1 --max-new-tokens 128 --json bench/results/pycode_shapes_held_out.json
python bench/studies/prompt_sets/acceptance_by_source.py \
    bench/results/pycode_int4_w1.json "$FIXTURE/dev_prompts.jsonl" \
    bench/results/pycode_int4_w1_held_out.json bench/fixtures/held_out_prompts.jsonl \
    bench/results/pycode_e256_int4_w1.json "$FIXTURE/dev_prompts.jsonl" \
    bench/results/pycode_e256_int4_w1_held_out.json bench/fixtures/held_out_prompts.jsonl \
    bench/results/pycode_shapes.json "$FIXTURE/dev_prompts.jsonl" \
    bench/results/pycode_shapes_held_out.json bench/fixtures/held_out_prompts.jsonl \
    --json bench/studies/prompt_sets/acceptance_by_source.json

# 9. Lookup beams (ops/prompt_lookup.py): tokens per step of lookup-only trees (no drafter),
#    of every drafter shape with 0, 1 and 2 lookup beams (greedy, dev prompts, batch 8), then
#    end to end at batch 1 against the autoregressive artifact (3 alternating rounds).
redcompile bench "$FIXTURE" --work-dir "$WORK/artifacts" \
    --prompts-file "$FIXTURE/dev_prompts.jsonl" --beam-width 0 --beam-length 3,4,5,6,7,8,9 \
    --lookup-beams 1,2,4 --batch-size 8 --repeats 1 --max-new-tokens 128 \
    --json bench/results/pycode_lookup_only_shapes.json
redcompile bench "$FIXTURE" --drafter "$WORK/drafter" --work-dir "$WORK/artifacts" \
    --prompts-file "$FIXTURE/dev_prompts.jsonl" --beam-width 1,2,4,8,16 --beam-length 4,5 \
    --lookup-beams 0,1,2 --batch-size 8 --repeats 1 --max-new-tokens 128 \
    --json bench/results/pycode_lookup_shapes.json
redcompile bench "$FIXTURE" --drafter "$WORK/drafter" --work-dir "$WORK/artifacts" \
    --drafter-weights int8 --prompts-file "$FIXTURE/dev_prompts.jsonl" \
    --beam-width 0,1 --beam-length 4,6 --lookup-beams 0,1 --batch-size 1 --repeats 3 \
    --max-new-tokens 128 --json bench/results/pycode_lookup_speed_b1.json
# ... and lookup-only with 1-grams alone against the default 3,2,1 (the default's choice).
redcompile bench "$FIXTURE" --work-dir "$WORK/artifacts" \
    --prompts-file "$FIXTURE/dev_prompts.jsonl" --beam-width 0 --beam-length 5 \
    --lookup-beams 1 --lookup-ngram 1 --batch-size 8 --repeats 1 --max-new-tokens 128 \
    --json bench/results/pycode_lookup_ngram1.json
