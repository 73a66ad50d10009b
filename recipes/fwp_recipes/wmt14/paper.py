"""The paper's WMT14 settings (Sec. 6.2, Table 1, Appendix E): batch, schedule, evaluation,
and the model table with the paper's BLEU (what a researcher diffs against the paper)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from fairseq_fwp import presets

from .. import common

SRC, TGT = "en", "de"
OUT = common.REPO / "outputs" / "wmt14_en_de"
DEFAULT_DATA = OUT / "data"
DEFAULT_CHECKPOINTS = OUT / "checkpoints"
DEFAULT_RESULTS = common.REPO / "results" / "wmt14.md"

# ---------------------------------------------------------------- the paper's settings
D_KEY = 64  # big model: 1024 / 16 heads (Appendix E: "d_key = 64 in all our translation models")
PAPER_GPUS, PAPER_TOKENS_PER_GPU, PAPER_UPDATE_FREQ = 3, 3584, 16  # Appendix E
PAPER_TOKENS_PER_UPDATE = PAPER_GPUS * PAPER_TOKENS_PER_GPU * PAPER_UPDATE_FREQ  # 172,032
PAPER_EPOCHS = 45
BEAM, LENPEN = 4, 0.6  # scaling_nmt's evaluation (Ott et al. 2018)
BPE_SIZE = 32000  # "32 K byte-pair encoding sub-word units" (Appendix E)
CLEAN_MIN, CLEAN_MAX, CLEAN_RATIO = 1, 250, 1.5  # fairseq's prepare-wmt14en2de.sh (clean-corpus-n)
EXPECTED_SEGMENTS = {"valid": 3000, "test": 3003}  # newstest2013, newstest2014 (full)

# fairseq examples/scaling_nmt (Ott et al. 2018); lr 1e-3 is scaling_nmt's advice for
# big (accumulated) batches -- the paper does not state its learning rate.
TRAIN_FLAGS = [
    "--task", "translation", "--source-lang", SRC, "--target-lang", TGT,
    "--arch", "fwp_transformer_wmt_en_de_big", "--share-all-embeddings",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
    "--lr", "0.001", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000", "--warmup-init-lr", "1e-07",
    "--dropout", "0.3", "--weight-decay", "0.0",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", str(PAPER_TOKENS_PER_GPU), "--max-epoch", str(PAPER_EPOCHS),
    # validation BLEU every epoch on detokenised output; keep the best by it; no averaging
    "--eval-bleu", "--eval-bleu-args", json.dumps({"beam": BEAM, "lenpen": LENPEN}),
    "--eval-bleu-detok", "moses", "--eval-bleu-detok-args", json.dumps({"target_lang": TGT}),
    "--eval-bleu-remove-bpe", "sentencepiece",
    "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
    "--no-epoch-checkpoints", "--seed", "1", "--log-format", "simple", "--log-interval", "100",
    # fairseq 0.12.3 drops a last batch smaller than this multiple (default 8): validation
    # would skip up to 7 of the longest newstest2013 sentences
    "--required-batch-size-multiple", "1",
]

@dataclass(frozen=True)
class Model:
    """One row of Table 1 (or one of our two delta-rule rows). The sum-rule rows are the
    Linear Transformer form (``fairseq_fwp.presets``: Eq. 17-19, attention normalisation),
    the delta rows Delta Net (Eq. 20-25 with sum normalisation, Eq. 29)."""

    name: str
    column: str  # Table 1 column: Standard, Linear, Performer, DPFP
    d_dot: int
    rule: str
    flags: Tuple[str, ...]
    paper_valid: Optional[float] = None  # Table 1, BLEU on newstest2013
    paper_test: Optional[float] = None  # Table 1, BLEU on newstest2014


def _performer(d_dot, valid, test):
    m = d_dot // 2  # Table 6: d_dot = 2m
    return Model(f"performer-{d_dot}", "Performer", d_dot, "sum", tuple(presets.flags("favor", "sum", m=m)),
                 valid, test)


def _dpfp(d_dot, rule, valid=None, test=None):
    nu = d_dot // (2 * D_KEY)  # Table 6: d_dot = 2 nu d_key
    suffix = "-delta" if rule == "delta" else ""
    return Model(f"dpfp-{d_dot}{suffix}", "DPFP" if rule == "sum" else "DPFP + delta rule", d_dot, rule,
                 tuple(presets.flags("dpfp", rule, nu=nu)), valid, test)


# Every fast weight model replaces all three attentions (encoder self, decoder self,
# encoder-decoder: --fwp-replace's default), as the Linear Transformer and Performer do.
MODELS: Dict[str, Model] = {m.name: m for m in [
    Model("transformer", "Standard", D_KEY, "softmax", tuple(presets.preset("softmax")), 26.6, 27.7),
    Model("linear", "Linear", D_KEY, "sum", tuple(presets.preset("linear")), 25.5, 26.8),
    _performer(64, 24.2, 24.4),
    _performer(256, 24.9, 25.3),
    _performer(512, 26.7, 27.7),
    _dpfp(256, "sum", 26.2, 26.9),
    _dpfp(512, "sum", 26.2, 27.1),
    # beyond Table 1 (the paper used only the sum rule for translation)
    Model("delta", "Delta Net (linear)", D_KEY, "delta", tuple(presets.preset("delta"))),
    _dpfp(256, "delta"),
]}


def get_model(name: str) -> Model:
    common.check_choice("MODEL", name, MODELS)
    return MODELS[name]


def update_freq(workers: int) -> int:
    """--update-freq giving the paper's 3 x 16 x 3584 tokens per update on ``workers`` GPUs."""
    return common.update_freq_for_tokens(PAPER_TOKENS_PER_UPDATE, workers, PAPER_TOKENS_PER_GPU)
