#!/usr/bin/env bash
# The fairseq-fwp demo: set up (or reuse) the environment, then run it through the recipes'
# launcher (recipes/launch.py demo run; logic in recipes/fwp_recipes/demo.py).
# Trains tiny Linear Transformer / Delta Net / softmax models on a toy translation task
# (BLEU) and a toy language-modelling task (perplexity) on the CPU, in a few minutes.
# Outputs: outputs/demo/ (re-running skips finished stages; --fresh starts over).
#
#   bash scripts/demo.sh [--fresh] [--models linear,delta,softmax] [--mt-epochs N] ...
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
fwp_setup_env
cd "$FWP_ROOT"
exec "$FWP_PY" recipes/launch.py demo run "$@"
