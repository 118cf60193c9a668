#!/usr/bin/env bash
# Run a share of experiments/dp_vs_nondp_gpu.yaml inside one short GPU session, continuing from the
# grid's finished cells committed under docs/results/dp_vs_nondp_gpu/, and pack the new state.
#
#   OUT=/somewhere bash experiments/gpu_session.sh [MAX_MINUTES] [HARD_LIMIT_S]
#
# On a lent GPU machine (no registry: the missing packages travel as wheels, ../shared/gpu/wheels.sh
# fills .whl/; carry .whl), one call of at most 600 s:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash experiments/gpu_session.sh 8 540
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
for part in seeds cells; do
  if [ -d "$STATE/$part" ]; then cp -r "$STATE/$part" "$RUN/"; fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
PYTHONUNBUFFERED=1 timeout "$HARD" python3 -m leakaudit experiment "$EXPERIMENT" \
  --out "$RUN" --max-minutes "$MINUTES" > "$OUT/experiment.log" 2>&1
rc=$?
echo "exit status: $rc" >> "$OUT/experiment.log"
tail -n 25 "$OUT/experiment.log"
(cd "$RUN" && tar czf "$OUT/dp_vs_nondp_gpu.tgz" --ignore-failed-read comparison.* figures \
  seeds/*/seed.json cells/*/cell.json 2>/dev/null)
ls -l "$OUT"
exit $rc
