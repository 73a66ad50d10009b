# Shared environment setup for scripts/test.sh and scripts/demo.sh (source it, then
# call fwp_setup_env). After it returns, $FWP_PY is the Python to use and $FWP_ROOT the
# repository root.
#
# Default: a virtual environment in $FWP_ROOT/.venv, created on first use.
# FWP_USE_CURRENT_ENV=1: install into the Python found as `python3` (or $FWP_PYTHON)
#   instead, e.g. a GPU machine's environment that already has a CUDA torch.
# FWP_TORCH_SPEC (default torch==2.13.0): what to install when torch is not importable.
# FWP_TORCH_INDEX_URL: index to take torch from (outside this project's machines use
#   https://download.pytorch.org/whl/cpu for the CPU build).
# FWP_EXTRAS (default test,plot,tensorboard): the package extras to install (test = pytest,
#   plot = matplotlib, used by the retrieval plots and their test, tensorboard = tensorboardX,
#   which fairseq's --tensorboard-logdir needs).
# FWP_FORCE_SETUP=1: redo the setup even if the stamp says it is done.
#
# Order matters: torch first (so pip never resolves a CUDA build for us), then numpy and
# cython, then fairseq-fixed (an sdist whose Cython extensions must be built against the
# numpy we run, hence --no-build-isolation), then this package in editable mode with the
# test extras. Every later pip call is constrained to the installed torch version.
#
# Idempotent: a stamp keyed on pyproject.toml, this file and the interpreter marks a
# finished setup; a second run only checks that the packages are still importable.

FWP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FWP_ROOT

_fwp_log() { printf '[setup] %s\n' "$*" >&2; }

_fwp_hash() {
    # sha256 of stdin, first 16 hex digits (sha256sum on Linux, shasum on macOS)
    if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-16; else shasum -a 256 | cut -c1-16; fi
}

_fwp_importable() {
    # -I: ignore the current directory and PYTHONPATH, so only installed packages count
    "$FWP_PY" -I - "$@" <<'PY' 2>/dev/null
import importlib.util, sys
sys.exit(0 if all(importlib.util.find_spec(m) for m in sys.argv[1:]) else 1)
PY
}

fwp_setup_env() {
    local base="${FWP_PYTHON:-}"
    if [[ -z "$base" ]]; then
        base="$(command -v python3 || command -v python || true)"
    fi
    if [[ -z "$base" ]]; then
        _fwp_log "no python3 found on PATH"; return 1
    fi

    if [[ "${FWP_USE_CURRENT_ENV:-0}" == "1" ]]; then
        FWP_PY="$base"
        _fwp_log "FWP_USE_CURRENT_ENV=1: installing into $("$FWP_PY" -c 'import sys; print(sys.prefix)')"
    else
        local venv="$FWP_ROOT/.venv"
        if [[ ! -x "$venv/bin/python" ]]; then
            _fwp_log "creating virtual environment $venv"
            "$base" -m venv "$venv"
        fi
        FWP_PY="$venv/bin/python"
    fi
    export FWP_PY

    "$FWP_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
        _fwp_log "Python >= 3.11 required, got $("$FWP_PY" -V 2>&1)"; return 1; }

    local key
    local extras="${FWP_EXTRAS:-test,plot,tensorboard}"
    key="$({ cat "$FWP_ROOT/pyproject.toml" "${BASH_SOURCE[0]}"; echo "$extras"; "$FWP_PY" -c 'import sys; print(sys.executable, sys.version)'; } | _fwp_hash)"
    local stampdir="$FWP_ROOT/.fwp-setup"
    local stamp="$stampdir/done-$key"
    if [[ -f "$stamp" && "${FWP_FORCE_SETUP:-0}" != "1" ]] \
        && _fwp_importable torch numpy fairseq fairseq_cli fairseq_fwp fwp_kernels sacrebleu pytest; then
        _fwp_log "environment up to date ($FWP_PY)"
        return 0
    fi

    local t0=$SECONDS
    mkdir -p "$stampdir"
    local pipq=(-m pip install --progress-bar off)
    [[ -n "${FWP_PIP_VERBOSE:-}" ]] || pipq+=(-q)

    if [[ "${FWP_USE_CURRENT_ENV:-0}" != "1" ]]; then
        _fwp_log "upgrading pip, setuptools, wheel"
        "$FWP_PY" "${pipq[@]}" -U pip "setuptools>=77" wheel
    fi

    if ! "$FWP_PY" -c 'import torch' >/dev/null 2>&1; then
        local spec="${FWP_TORCH_SPEC:-torch==2.13.0}"
        _fwp_log "installing $spec (CPU build unless you point FWP_TORCH_INDEX_URL elsewhere)"
        if [[ -n "${FWP_TORCH_INDEX_URL:-}" ]]; then
            "$FWP_PY" "${pipq[@]}" "$spec" --index-url "$FWP_TORCH_INDEX_URL"
        else
            "$FWP_PY" "${pipq[@]}" "$spec"
        fi
    else
        _fwp_log "using installed torch $("$FWP_PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
    fi
    # Pin torch for every later pip call so no dependency can swap it for another build.
    "$FWP_PY" -c 'import torch; print("torch==" + torch.__version__)' 2>/dev/null > "$stampdir/constraints.txt"
    local cons=(-c "$stampdir/constraints.txt")

    _fwp_log "installing numpy, cython"
    "$FWP_PY" "${pipq[@]}" "${cons[@]}" numpy cython "setuptools>=77" wheel

    if ! "$FWP_PY" -c 'import importlib.metadata as m; m.version("fairseq-fixed")' >/dev/null 2>&1; then
        _fwp_log "building fairseq-fixed==0.12.3.1 (sdist, --no-build-isolation; about a minute)"
        "$FWP_PY" "${pipq[@]}" "${cons[@]}" --no-build-isolation "fairseq-fixed==0.12.3.1"
    fi

    _fwp_log "installing fairseq-fwp (editable) with extras [$extras]"
    "$FWP_PY" "${pipq[@]}" "${cons[@]}" --no-build-isolation -e "$FWP_ROOT[$extras]"

    if ! _fwp_importable torch numpy fairseq fairseq_cli fairseq_fwp fwp_kernels sacrebleu pytest; then
        _fwp_log "setup finished but a package is still not importable"; return 1
    fi
    touch "$stamp"
    _fwp_log "setup done in $((SECONDS - t0)) s ($FWP_PY)"
}
