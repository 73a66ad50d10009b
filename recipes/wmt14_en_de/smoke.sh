#!/usr/bin/env bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_env.sh"
exec "$FWP_PY" "$FWP_RECIPES/launch.py" wmt14 smoke "$@"
