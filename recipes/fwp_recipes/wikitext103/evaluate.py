"""``evaluate``: perplexity in the paper's two modes (sliding window, state carried) and the run's rows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import common
from ..common import RecipeError
from .args import DEFAULT_RESULTS, add_setting_args, log_msg, make_parser, run_paths, setting_from_args
from .data import data_info
from .results import RESULTS_PREAMBLE, SECTIONS, result_rows

# ----------------------------------------------------------------------- evaluate

MODES = ("sliding", "full")
_PPL = re.compile(r"Loss \(base 2\): ([0-9.]+|nan|inf), Perplexity: ([0-9.]+|nan|inf)")
_NTOK = re.compile(r"Evaluated ([0-9,]+) tokens")


def eval_command(s: Setting, data: Path, checkpoint: Path, mode: str, split: str, *, cpu: bool,
                 batch: Optional[int] = None) -> List[str]:
    """fairseq-eval-lm in the paper's two evaluation modes (see fairseq_fwp's
    fwp_language_modeling task): ``sliding`` scores every token with min(t, L-1) tokens
    of context (Tables 2, 3, 5), ``full`` carries the state through the split (Table 4)."""
    cmd = common.fairseq_cmd(
        "eval_lm", data, "--user-dir", common.USER_DIR, "--task", "fwp_language_modeling",
        "--path", checkpoint, "--gen-subset", split, "--tokens-per-sample", s.cfg.tokens_per_sample,
        "--fwp-eval-mode", mode, "--log-format", "simple",
    )
    if mode == "sliding":
        cmd += ["--batch-size", batch or s.cfg.eval_batch]
    else:
        cmd += ["--batch-size", 1]
    if cpu:
        cmd.append("--cpu")
    return [str(c) for c in cmd]


def parse_eval(output: str) -> Tuple[float, Optional[int]]:
    """(perplexity, scored tokens) from fairseq-eval-lm's output."""
    m = None
    for m in _PPL.finditer(output):
        pass
    if m is None:
        raise RecipeError("fairseq-eval-lm printed no 'Loss (base 2): X, Perplexity: Y' line")
    n = None
    for t in _NTOK.finditer(output):
        n = int(t.group(1).replace(",", ""))
    return float(m.group(2)), n


def model_stats(checkpoint: Path) -> dict:
    """Parameters and fast weight state size of a trained model, from its checkpoint:
    state size = layers x heads x d_dot x d_head (the paper's Table 4, Appendix F)."""
    import torch

    import fairseq_fwp  # noqa: F401  (checkpoint globals for torch.load)
    from fairseq_fwp.modules.feature_maps import build_feature_map

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    seen, params = set(), 0
    for name, t in ck["model"].items():
        if not t.is_floating_point() or "_float_tensor" in name or name.endswith(".version"):
            continue
        if "feature_map" in name:  # FAVOR+'s random features: a buffer, not trained
            continue
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ptr in seen:
            continue
        seen.add(ptr)
        params += t.numel()
    m = ck["cfg"]["model"]
    get = (lambda k: getattr(m, k)) if not isinstance(m, dict) else m.get
    layers, heads, dim = int(get("decoder_layers")), int(get("decoder_attention_heads")), int(get("decoder_embed_dim"))
    fm = str(get("fwp_feature_map"))
    d_head = dim // heads
    if fm == "softmax":
        d_dot, state = None, None
    else:
        d_dot = build_feature_map(fm, d_head, dpfp_nu=int(get("fwp_dpfp_nu")),
                                  favor_features=int(get("fwp_favor_features"))).d_dot
        state = layers * heads * d_dot * d_head
    return {"params": params, "layers": layers, "heads": heads, "d_head": d_head, "d_dot": d_dot,
            "state": state, "num_updates": ck.get("optimizer_history", [{}])[-1].get("num_updates")}


def evaluate(argv: Sequence[str]) -> int:
    p = make_parser("evaluate.sh", "Valid/test perplexity of a trained run in both modes; rows into the results file.")
    add_setting_args(p)
    p.add_argument("--checkpoint", default="best", help="best, last or a path (default best)")
    p.add_argument("--modes", default="sliding,full", help="comma-separated subset of sliding, full")
    p.add_argument("--splits", default="valid,test", help="comma-separated subset of valid, test")
    p.add_argument("--batch-size", type=int, help="sliding-window windows per batch (default per config)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help=f"Markdown results file (default {DEFAULT_RESULTS.relative_to(common.REPO)})")
    a = common.parse_args(p, argv)
    s = setting_from_args(a)
    data, save_dir = run_paths(a, s)
    modes = [common.check_choice("--modes entry", m, MODES) for m in a.modes.split(",") if m]
    splits = [common.check_choice("--splits entry", x, ("valid", "test")) for x in a.splits.split(",") if x]
    ck = Path(a.checkpoint) if a.checkpoint not in ("best", "last") else save_dir / f"checkpoint_{a.checkpoint}.pt"
    if not ck.is_file():
        raise RecipeError(f"{ck}: no checkpoint; train first: recipes/wikitext103/train.sh {s.config} {s.model} ...")
    info = data_info(data)
    stats = model_stats(ck)
    cpu = common.world_size() == 0
    log = save_dir / "evaluate.log"
    ppl: Dict[Tuple[str, str], Optional[float]] = {}
    for mode in modes:
        if mode == "full" and not s.fast_weights:
            log_msg(f"{s.name}: no fast weight state to carry (softmax attention); full mode skipped")
            continue
        for split in splits:
            out = common.run(eval_command(s, data, ck, mode, split, cpu=cpu, batch=a.batch_size), log=log)
            value, ntok = parse_eval(out)
            ppl[(mode, split)] = value
            print(f"RESULT run={s.name} mode={mode} split={split} ppl={value:.4f} tokens={ntok} "
                  f"vocab={info['vocab']}", flush=True)
    for section, row in result_rows(s, stats, ppl):
        title, header = SECTIONS[section]
        common.results_table(a.results, header, row[:1], row, RESULTS_PREAMBLE, section=title)
    log_msg(f"{s.name}: params {stats['params']:,}, state size "
         f"{'—' if stats['state'] is None else format(stats['state'], ',')}; rows in {a.results}")
    return 0
