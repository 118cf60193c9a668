#!/usr/bin/env bash
# Run a share of experiments/dp_vs_nondp_gpu.yaml inside one short GPU session, continuing from the
# grid's finished cells committed under docs/results/dp_vs_nondp_gpu/, and pack the new state.
#
#   OUT=/somewhere bash experiments/gpu_session.sh [MAX_MINUTES] [HARD_LIMIT_S]
#
# On a lent GPU machine (no registry: the missing packages travel as wheels, `../shared/gpu/wheels.sh
# submitit cloudpickle` fills .whl/; carry .whl), one call of at most 600 s:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash experiments/gpu_session.sh 8 560
#
# MAX_MINUTES (default 8) goes to `leakaudit experiment --max-minutes`: no seed or cell starts once the
# time left is shorter than the longest so far. HARD_LIMIT_S (default 560) stops the experiment
# outright, so that the packing below always runs. Only light files travel between sessions
# (seeds/*/seed.json, cells/*/cell.json; no models): a seed whose cells are not all finished is
# prepared again in the next session (its base model is retrained; each cell records the hash of the
# base model it came from and the comparison says when a seed's cells come from several).
#
# Back on the development machine, unpack the state into the repository and commit it:
#   tar xzf FILES_AT/dp_vs_nondp_gpu.tgz -C docs/results/dp_vs_nondp_gpu
# JOBS (default 8) cells run side by side on the one GPU (`--executor submitit --jobs JOBS`, local
# subprocesses; a grid cell leaves most of an H100 idle: measured 2026-11-26, a non-DP cell spent 15 s
# of its 100 s training and the rest in the audit's small, sequential passes); JOBS=1, or submitit not
# importable, runs them in turn in this process. Seconds per step of every cell this session touched,
# finished or cut off, are packed under timings/<UTC time>/ (event, stage and step names, counts and times).
# EXPERIMENT, STATE and RUN (environment) choose another grid, state folder and run directory.
# Exit status: the experiment's (0 all cells finished, 3 cells left for a next session, 1 a cell
# failed, 124 stopped at HARD_LIMIT_S).
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-8}
HARD=${2:-560}
EXPERIMENT=${EXPERIMENT:-experiments/dp_vs_nondp_gpu.yaml}
STATE=${STATE:-docs/results/dp_vs_nondp_gpu}
RUN=${RUN:-runs/experiments/dp_vs_nondp_gpu}
OUT=${OUT:-runs/gpu_session_out}
mkdir -p "$RUN" "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the packing below runs inside $RUN
for part in seeds cells; do
  if [ -d "$STATE/$part" ]; then cp -r "$STATE/$part" "$RUN/"; fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
JOBS=${JOBS:-8}
executor=()
if [ "$JOBS" -gt 1 ] && python3 -c "import submitit" 2>/dev/null; then
  executor=(--executor submitit --jobs "$JOBS")
fi
echo "executor: ${executor[*]:-local}" > "$OUT/experiment.log"
PYTHONUNBUFFERED=1 timeout "$HARD" python3 -m leakaudit experiment "$EXPERIMENT" \
  --out "$RUN" --max-minutes "$MINUTES" "${executor[@]}" >> "$OUT/experiment.log" 2>&1
rc=$?
# jobs of a run stopped at HARD_LIMIT_S: submitit's jobs ignore SIGTERM (they bypass it), not SIGINT
if pkill -INT -f 'submitit\.core\._submit' 2>/dev/null; then
  sleep 3
  pkill -KILL -f 'submitit\.(core\._submit|local\._local)' 2>/dev/null
fi
echo "exit status: $rc" >> "$OUT/experiment.log"
if [ "$rc" -ne 0 ]; then  # stopped or failed before writing it: the comparison of the cells finished so far
  timeout 60 python3 -c 'import sys; from leakaudit.experiment import rewrite_comparison
print("comparison rewritten:", rewrite_comparison(sys.argv[1], sys.argv[2]), "cells")' "$EXPERIMENT" "$RUN" \
    >> "$OUT/experiment.log" 2>&1
fi
tail -n 25 "$OUT/experiment.log"
stamp=$(date -u +%Y%m%dT%H%M)
# timings: the events' names, counts and seconds only (no messages, errors or tracebacks)
(cd "$RUN" && mkdir -p "timings/$stamp" && for f in events.jsonl cells/*/events.jsonl seeds/*/events.jsonl; do
   [ -f "$f" ] || continue
   name=$(basename "$(dirname "$f")"); [ "$f" = events.jsonl ] && name=experiment
   python3 -c 'import json, sys
keep = ("time", "event", "stage", "step", "task", "seconds", "model", "steps", "dp", "canaries", "texts", "cells")
for line in open(sys.argv[1], encoding="utf-8"):
    try:
        row = json.loads(line)
    except ValueError:
        continue
    print(json.dumps({k: row[k] for k in keep if k in row}))' "$f" > "timings/$stamp/$name.jsonl"
 done
 tar czf "$OUT/dp_vs_nondp_gpu.tgz" --ignore-failed-read comparison.* figures \
  seeds/*/seed.json cells/*/cell.json "timings/$stamp" 2>>"$OUT/experiment.log") \
  || echo "packing failed: see experiment.log" | tee -a "$OUT/experiment.log"
ls -l "$OUT"
exit $rc
