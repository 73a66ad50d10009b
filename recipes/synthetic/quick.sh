#!/usr/bin/env bash
# The CPU-scale version of both synthetic settings (about 15 minutes on 2 idle cores with
# JOBS=2): d_key = 16 instead of 64, S <= 64, at most 2000 updates per run. It shows
# the paper's trends at a smaller size: linear attention (d_dot = 16) fails above ~16
# associations while DPFP-nu (d_dot = 32 nu) holds further (setting 1), and the delta
# rule beats the sum rule when keys are re-assigned (setting 2).
#
#   JOBS=2 recipes/synthetic/quick.sh        # -> $OUT/quick.png (+ per-setting figures)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-$REPO/outputs/synthetic_quick}"
export OUT PYTHON
"$HERE/capacity.sh" --quick "$@"
"$HERE/update_rules.sh" --quick "$@"
"$PYTHON" "$REPO/scripts/plot_retrieval.py" "$OUT/capacity/results.csv" "$OUT/update_rules/results.csv" \
    -o "$OUT/quick.png" --table \
    --title "Setting 1 (quick): no replacement, L = S, d_key = 16" \
    --title "Setting 2 (quick): with replacement, L = 2S, d_key = 16"
