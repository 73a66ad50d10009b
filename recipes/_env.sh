# Sourced by every recipe shell script (recipes/*/*.sh): set up or reuse the environment
# exactly as scripts/demo.sh does (scripts/_env.sh: .venv by default, FWP_USE_CURRENT_ENV=1
# for your own Python, e.g. a CUDA build), then export FWP_PY (the Python to run) and
# FWP_RECIPES (this folder). The recipe logic lives in recipes/fwp_recipes/ (one launcher).
FWP_RECIPES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export FWP_RECIPES
source "$FWP_RECIPES/../scripts/_env.sh"
fwp_setup_env
