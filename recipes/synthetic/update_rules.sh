#!/usr/bin/env bash
# Setting 2 (paper Sec. 6.1.2, Fig. 3 and 5): update rules. Keys and values with
# replacement, L = 2S, S = 20..200 step 20, d_key = 64; for DPFP-1, linear and FAVOR+
# (m = 64): sum rule (attention-normalised), delta rule with sum normalisation ("ours"),
# delta rule without sum normalisation, and (DPFP-1, linear) the FWM rule of Schlag et
# al. (2021). Then Fig. 5 (final eval loss vs S) and Fig. 3 (learning curves at S = 20
# full scale, S = 16 quick).
#
#   JOBS=4 recipes/synthetic/update_rules.sh         # full scale (GPU used when present)
#   recipes/synthetic/update_rules.sh --quick        # CPU scale: d_key 16, S = 8..32
#
# Finished runs are skipped (rerun the same command after an interruption).
# Results: $OUT/update_rules/results.csv, $OUT/update_rules.png, $OUT/update_rules_curves.png.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-$REPO/outputs/synthetic}"
export OUT
CURVE_S=20
for a in "$@"; do [[ "$a" == "--quick" ]] && CURVE_S=16; done
"$PYTHON" "$REPO/recipes/launch.py" synthetic update_rules "$@"
"$PYTHON" "$REPO/scripts/plot_retrieval.py" "$OUT/update_rules/results.csv" -o "$OUT/update_rules.png" \
    --title "Setting 2: update rules (with replacement, L = 2S)"
"$PYTHON" "$REPO/scripts/plot_retrieval.py" --curves "$OUT/update_rules" --num-keys "$CURVE_S" \
    -o "$OUT/update_rules_curves.png" --title "Setting 2: learning curves, S = $CURVE_S, L = $((2 * CURVE_S))"
