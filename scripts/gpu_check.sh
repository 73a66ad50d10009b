#!/usr/bin/env bash
# The GPU checks of the Triton kernels (issue 4), stage by stage, for a machine with an
# NVIDIA GPU, PyTorch and Triton. Needs neither fairseq nor an install of this repo:
# the kernels package (folder kernels/, imported as fwp_kernels) is put on the path.
#
#   bash scripts/gpu_check.sh tests        # tests/test_triton_kernels.py on CUDA: every kernel
#                                          # at model sizes in fp32/fp16/bf16 + the small shapes
#   bash scripts/gpu_check.sh bench-bf16   # the issue's grid in bf16 (all impls, fla if present)
#   bash scripts/gpu_check.sh bench-fp32   # fp32 (fla refuses it): triton, chunk, sdpa
#   bash scripts/gpu_check.sh all          # the three in turn
#
# Output: a log per stage under $FWP_GPU_OUT (default $OUT when set, else
# outputs/gpu_check/), headed by the versions (GPU, driver, torch, triton, fla). The
# benchmark tables are markdown, to paste into docs/benchmarks.md; bench_kernels.py
# exits 1 when one of its numerical self-checks fails, and so does this script.
#
# flash-linear-attention for the comparison: on a machine without internet, download
# the pure-Python wheel beforehand (`pip download --no-deps fla-core -d .whl`) and copy
# the .whl folder along; this script installs every wheel in .whl/ into a private folder.
# Extra arguments after the stage go to bench_kernels.py (e.g. --t 2048 --d-dot 64).
set -euo pipefail
stage=${1:-all}
shift || true
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${FWP_GPU_OUT:-${OUT:-outputs/gpu_check}}
mkdir -p "$out"
PY=${FWP_PYTHON:-python3}

case $stage in
    tests|bench-bf16|bench-fp32|all) ;;
    *) echo "unknown stage '$stage': use tests, bench-bf16, bench-fp32 or all" >&2; exit 2 ;;
esac
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: these checks need a GPU')"

site=$(mktemp -d /tmp/fwp-gpu-site.XXXXXX)
trap 'rm -rf "$site"' EXIT
ln -s "$PWD/kernels" "$site/fwp_kernels"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1

versions() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}),",
      f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
try:
    import triton; print("triton", triton.__version__)
except ImportError as e: print("triton: not importable:", e)
try:
    import fla; print("fla", fla.__version__)
except Exception as e: print("fla: not importable:", type(e).__name__, e)
EOF
}

run_stage() {  # name, command...
    local name=$1; shift
    local log="$out/$name.log"
    echo "== $name: $*" | tee "$log"
    versions | tee -a "$log"
    set +e
    "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    echo "== $name: exit $rc" | tee -a "$log"
    return "$rc"
}

rc=0
case $stage in
    tests|all)
        run_stage tests "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_triton_kernels.py || rc=1 ;;&
    bench-bf16|all)
        run_stage bench_bf16 "$PY" scripts/bench_kernels.py --dtype bf16 "$@" || rc=1 ;;&
    bench-fp32|all)
        run_stage bench_fp32 "$PY" scripts/bench_kernels.py --dtype fp32 --impls triton,chunk,sdpa "$@" || rc=1 ;;&
esac
exit $rc
