#!/usr/bin/env bash
# WikiText-103 prepare (see README.md here; logic in recipes/fwp_recipes/wikitext103/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_env.sh"
exec "$FWP_PY" "$FWP_RECIPES/launch.py" wikitext103 prepare "$@"
