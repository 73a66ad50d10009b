#!/usr/bin/env bash
# Run the test suite: set up (or reuse) the environment, then `python -m pytest "$@"`.
#
#   bash scripts/test.sh                    # everything
#   bash scripts/test.sh tests/test_cli.py -x -q
#   FWP_USE_CURRENT_ENV=1 bash scripts/test.sh   # use the current Python (e.g. with CUDA torch)
#
# See scripts/_env.sh for the environment variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
fwp_setup_env
cd "$FWP_ROOT"
echo "[test] $FWP_PY -m pytest $*" >&2
exec "$FWP_PY" -m pytest "$@"
