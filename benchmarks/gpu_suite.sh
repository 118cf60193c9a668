#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one command, for a short device lease.
#
#   OUT=runs/gpu bash benchmarks/gpu_suite.sh [SECONDS]
#
# A dry run of the same steps on a CPU, small:
#   SIZE=tiny NEW=16 BATCHES=1,8 TEXTS=16 SPACE=10000 SAMPLES=300 REPRO_BATCHES=8,16 REPRO_NEW=16 \
#     bash benchmarks/gpu_suite.sh 600
#
# Steps run in the order below (STEPS picks some, it does not reorder them), each under its own time
# limit and all under SECONDS (default 540) in total; a step that fails or runs out of time is logged and the next one starts.  Each
# writes one JSON file under $OUT; log.txt holds every step's output and exit status.  Packages the
# machine lacks (opacus, datasets, faker, pydantic) must be importable first (see
# ../shared/gpu/wheels.sh: PYTHONPATH=/tmp/site:$PWD).
set -u
OUT=${OUT:-runs/gpu}
TOTAL=${1:-540}
SIZE=${SIZE:-gpt2-small} NEW=${NEW:-256} BATCHES=${BATCHES:-1,64,512} TEXTS=${TEXTS:-1024}
SPACE=${SPACE:-1000000} SAMPLES=${SAMPLES:-100000} ARCHS=${ARCHS:-gpt2,llama}
REPRO_BATCHES=${REPRO_BATCHES:-64,512} REPRO_NEW=${REPRO_NEW:-128} REPRO_VARIANTS=${REPRO_VARIANTS:-default,no-graph,portable,no-cudnn-sdpa,math-sdpa}
VARIANTS=${VARIANTS-1}  # empty: skip the engine variants
STEPS=${STEPS:-}  # a comma-separated subset of the step names below (default: all)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=true
log="$OUT/log.txt"
start=$(date +%s)

step() {  # step NAME LIMIT OUTFILE CMD...
  local name=$1 limit=$2 outfile=$3
  shift 3
  if [ -n "$STEPS" ] && [[ ",$STEPS," != *",$name,"* ]]; then
    return
  fi
  local left=$((TOTAL - ($(date +%s) - start)))
  if [ "$left" -lt 20 ]; then
    echo "== $name skipped: ${left}s left" >>"$log"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, at $(( $(date +%s) - start ))s)" >>"$log"
  local t0
  t0=$(date +%s)
  if [ "$outfile" = "-" ]; then
    timeout "$limit" "$@" >>"$log" 2>&1
  else
    timeout "$limit" "$@" >"$outfile" 2>>"$log"
  fi
  echo "== $name rc=$? in $(( $(date +%s) - t0 ))s" >>"$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} >>"$log" 2>&1

# known-answer checks first: the captured decoding step against the library's greedy decoding
step gpu-tests 180 - python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_generation.py tests/test_target.py tests/test_vocab.py tests/test_bookkeeping.py tests/test_attention.py
# issue 7: same seed, same samples? greedy and top-k at GPT-2-small shapes, with kernels switched off in turn
step repro 100 - python3 benchmarks/generation_repro.py --size "$SIZE" --batches "$REPRO_BATCHES" \
  --new-tokens "$REPRO_NEW" --variants "$REPRO_VARIANTS" --out "$OUT/repro.json"
if grep -q '"identical": false' "$OUT/repro.json" 2>/dev/null; then  # then: does cuBLAS's workspace matter?
  CUBLAS_WORKSPACE_CONFIG=:4096:8 step repro-cublas 60 - python3 benchmarks/generation_repro.py --size "$SIZE" \
    --batches "$REPRO_BATCHES" --new-tokens "$REPRO_NEW" --variants default,no-graph --out "$OUT/repro_cublas.json"
fi
# issue 7: engine vs library generate, GPT-2-small and Llama-style, batch 1/64/512, 256 new tokens
step generation 150 - python3 benchmarks/generation.py --size "$SIZE" --batches "$BATCHES" --new-tokens "$NEW" \
  --archs "$ARCHS" --step-profile ${VARIANTS:+--variants} --attention-variants --out "$OUT/generation.json"
# issue 7: GPT-2-small at the largest batch, the cache slices of the fourteenth session against the old ones
# (64 slots after one prompt column per call), alternately in one run; and where a step's time goes
step generation-slices 120 - python3 benchmarks/generation.py --size "$SIZE" --batches "${BATCHES##*,}" \
  --new-tokens "$NEW" --archs gpt2 --slices-ab 2 --step-profile --out "$OUT/generation_slices.json"
# issue 7: the same at the largest batch with the decoding step compiled (experimental)
step generation-compiled 200 - python3 benchmarks/generation.py --size "$SIZE" --batches "${BATCHES##*,}" \
  --new-tokens "$NEW" --archs "${ARCHS%%,*}" --compile-step --out "$OUT/generation_compiled.json"
# issue 4: exact exposure over 10^6 candidates vs the naive loop
step exposure 90 "$OUT/exposure.json" python3 benchmarks/secret_scoring.py --size "$SIZE" --bf16 \
  --candidates 20000 --loop-candidates 200 --exact-space "$SPACE"
# issue 3: scoring engine vs one-per-pass and plain batched fp32, 512-token texts; where its time goes
step scoring 90 "$OUT/scoring.json" python3 benchmarks/scoring_engine.py --size "$SIZE" --texts "$TEXTS" \
  --max-tokens 512 --profile
# issue 3: the same with Min-K%++'s statistics in every pass (what an audit runs)
step scoring-stats 60 "$OUT/scoring_stats.json" python3 benchmarks/scoring_engine.py --size "$SIZE" \
  --texts 512 --max-tokens 512 --stats
# issue 3: every text exactly 512 tokens (the wording), with the statistics
step scoring-512 60 "$OUT/scoring_512.json" python3 benchmarks/scoring_engine.py --size "$SIZE" \
  --texts 512 --max-tokens 512 --min-tokens 512 --stats
# issue 5's grid: best-first canary search, look-ahead batches against one pass per expansion (gpu preset model)
step search 60 "$OUT/search.json" python3 benchmarks/extraction_search.py --size gpt2-preset --budget 200 \
  --canaries 8
# issue 3: the engine with the whole model compiled (experimental; compiling counted apart)
step scoring-compiled 150 "$OUT/scoring_compiled.json" python3 benchmarks/scoring_engine.py --size "$SIZE" \
  --texts 512 --max-tokens 512 --stats --compiled-model
# issue 5: DP step cost, GPT-2-small-sized, Opacus hooks and ghost and leakaudit's book-keeping against non-DP
step dp-gpt2 150 "$OUT/dp_gpt2.json" python3 benchmarks/dp_step.py --arch gpt2 --size "$SIZE" --batch 16 \
  --tokens 256 --steps 5 --fixed-batch
# issue 7: the untargeted attack's sampling stage, 100,000 samples of 256 tokens; POST=1: then the rest of the
# attack on them (ranking, dedupe, verification; the sampling figure is written before it starts; any non-empty POST)
step untargeted $(( ${POST:+180} + 220 )) - python3 benchmarks/generation.py --size "$SIZE" --archs gpt2 \
  --batches "" --new-tokens "$NEW" --untargeted-samples "$SAMPLES" ${POST:+--untargeted-post} \
  --out "$OUT/untargeted.json"
# issue 5: the same DP comparison on a Llama-style model
step dp-llama 130 "$OUT/dp_llama.json" python3 benchmarks/dp_step.py --arch llama --size "$SIZE" --batch 16 \
  --tokens 256 --steps 5 --fixed-batch
# a whole manifest's exposure (48 canaries, 2,000 null secrets): tails tokenized once per spec vs per canary
step exposure-manifest 120 "$OUT/exposure_manifest.json" python3 benchmarks/exposure_speed.py --size "$SIZE" --bf16
echo "== done in $(( $(date +%s) - start ))s" >>"$log"
