#!/usr/bin/env bash
# Setting 1 (paper Sec. 6.1.1, Fig. 2): capacity of the memory. Keys and values without
# replacement, L = S, S = 20..600 step 20, d_key = 64, sum update rule (attention-
# normalised, as in the authors' code) with softmax, linear, FAVOR+ m in {64,128,512}
# and DPFP nu in {1,2,3}; then the figure (final eval loss vs S, log y).
#
#   JOBS=4 recipes/synthetic/capacity.sh            # full scale (GPU used when present)
#   recipes/synthetic/capacity.sh --quick           # CPU scale: d_key 16, S = 8..64
#   OUT=/data/synthetic recipes/synthetic/capacity.sh --models linear,dpfp1 --sizes 20,40
#
# Finished runs are skipped (rerun the same command after an interruption).
# Results: $OUT/capacity/results.csv and $OUT/capacity.png (OUT defaults to results/synthetic).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-$REPO/outputs/synthetic}"
export OUT
"$PYTHON" "$REPO/recipes/launch.py" synthetic capacity "$@"
"$PYTHON" "$REPO/scripts/plot_retrieval.py" "$OUT/capacity/results.csv" -o "$OUT/capacity.png" \
    --title "Setting 1: capacity (no replacement, L = S)"
