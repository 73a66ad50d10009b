"""The paper's WikiText-103 settings (Sec. 6.3, Appendix D.3, F): model sizes and schedules, the
model table, one run's :class:`Setting`, and the perplexities of Tables 2-5."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from fairseq_fwp import presets

from .. import common
from ..common import RecipeError

# ------------------------------------------------------------------ the model table


@dataclass(frozen=True)
class Config:
    """A model size of the paper (Sec. 6.3, Appendix F) and its training schedule."""

    arch: str
    tokens_per_sample: int  # L: training context = backpropagation span = evaluation window
    batch: int  # sequences of L tokens per update (the paper's batch size)
    max_per_gpu: int  # sequences one GPU holds (the authors: 2 x 16 GB V100 per run)
    max_update: int  # cosine schedule length
    favor_m: int  # Performer m giving d_dot = d_head (the Linear Transformer's capacity, Table 2)
    lr: float = 2.5e-4
    warmup: int = 2000
    save_interval_updates: int = 2000
    log_interval: int = 100
    eval_batch: int = 64  # sliding-window windows per evaluation batch
    arch_flags: Tuple[str, ...] = ()  # size overrides (only the CPU-scale "tiny" config)
    paper_epochs: Optional[int] = None
    note: str = ""


CONFIGS: Dict[str, Config] = {
    # 96 x 256 = 24,576 tokens per update; 500k updates ~ 119 epochs of the 103M-token
    # train set (the paper: ~120; the authors' small script: --max_step 500000).
    "small": Config("fwp_lm_wt103_small", 256, 96, 48, 500_000, favor_m=8, paper_epochs=120,
                    note="D = 128, 8 heads x 16, L = 256 (Table 2/5 'small', 40M parameters)"),
    # 56 x 384 = 21,504 tokens per update; 340k updates ~ 70 epochs (the paper: ~70).
    "medium": Config("fwp_lm_wt103_medium", 384, 56, 28, 340_000, favor_m=16, paper_epochs=70,
                     note="D = 256, 8 heads x 32, L = 384 (Table 2/3/4 'medium', 90M parameters)"),
    # Not a paper size: the smoke test's CPU scale (2 layers, D = 32, 4 heads x 8, L = 32,
    # adaptive cutoffs for a ~50-word vocabulary), same recipe path otherwise.
    "tiny": Config("fwp_lm_wt103_small", 32, 8, 8, 300, favor_m=4, lr=3e-3, warmup=30,
                   save_interval_updates=100, log_interval=50, eval_batch=64,
                   arch_flags=("--decoder-layers", "2", "--decoder-embed-dim", "32",
                               "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "4",
                               "--adaptive-softmax-cutoff", "10,25", "--adaptive-input-cutoff", "10,25"),
                   note="CPU smoke scale, not a paper setting"),
}


@dataclass(frozen=True)
class Model:
    """A row of Tables 2-5: feature map phi and update rule, in the setting of the authors'
    code (``fairseq_fwp.presets.lmtool_flags``): every fast weight model sum-normalises
    phi(k) and phi(q) (Eq. 29); the sum-rule layers also divide by z.phi(q) (Eq. 18-19),
    the delta-rule layers do not (Table 3's best setting, used in Table 2)."""

    feature_map: str
    update_rule: str = "sum"
    label: str = ""

    @property
    def attn_norm(self) -> bool:
        return self.feature_map != "softmax" and self.update_rule == "sum"


MODELS: Dict[str, Model] = {
    "transformer": Model("softmax", label="Transformer"),
    "linear": Model("linear", "sum", "Linear Transformer"),
    "delta": Model("linear", "delta", "Delta Network"),
    "performer": Model("favor", "sum", "Performer"),
    "performer-delta": Model("favor", "delta", "Performer + delta"),
    "dpfp": Model("dpfp", "sum", "DPFP"),
    "dpfp-delta": Model("dpfp", "delta", "DPFP + delta"),
}


@dataclass(frozen=True)
class Setting:
    """One run: CONFIG x MODEL x the ablation switches of Tables 3-5."""

    config: str
    model: str
    pos: bool = True  # absolute positional embeddings (Table 3)
    attn_norm: Optional[bool] = None  # None: the model's default (Table 3 switches it)
    carry: bool = False  # Table 4: fast weights carried across training segments
    favor_m: Optional[int] = None  # None: the config's m (Table 2); 16 at small = Table 5
    dpfp_nu: Optional[int] = None  # None: 1 (Table 5)

    @property
    def cfg(self) -> Config:
        return CONFIGS[self.config]

    @property
    def spec(self) -> Model:
        return MODELS[self.model]

    @property
    def fast_weights(self) -> bool:
        return self.spec.feature_map != "softmax"

    @property
    def m(self) -> Optional[int]:
        return (self.favor_m or self.cfg.favor_m) if self.spec.feature_map == "favor" else None

    @property
    def nu(self) -> Optional[int]:
        return (self.dpfp_nu or 1) if self.spec.feature_map == "dpfp" else None

    @property
    def default_attn_norm(self) -> bool:
        """Without --attn-norm: the model's own setting; with --carry, off for the delta
        rule (Table 4's Delta Net: "neither positional encoding nor attention
        normalisation") and kept for the sum rule (Table 4's Linear Transformer row; the
        paper reports > 1600 perplexity without it)."""
        if self.carry and self.spec.update_rule == "delta":
            return False
        return self.spec.attn_norm

    @property
    def effective_attn_norm(self) -> bool:
        return self.default_attn_norm if self.attn_norm is None else self.attn_norm

    @property
    def default_pos(self) -> bool:
        return not self.carry  # Table 4 trains without positional encoding

    @property
    def name(self) -> str:
        """Run name (checkpoint folder): CONFIG-MODEL plus every non-default switch."""
        parts = [self.config, self.model]
        if self.spec.feature_map == "favor" and self.m != self.cfg.favor_m:
            parts.append(f"m{self.m}")
        if self.spec.feature_map == "dpfp" and self.nu != 1:
            parts.append(f"nu{self.nu}")
        if self.pos != self.default_pos:
            parts.append("pos" if self.pos else "nopos")
        if self.fast_weights and self.effective_attn_norm != self.default_attn_norm:
            parts.append("attnnorm" if self.effective_attn_norm else "noattnnorm")
        if self.carry:
            parts.append("carry")
        return "-".join(parts)

    def validate(self) -> "Setting":
        common.check_choice("CONFIG", self.config, CONFIGS)
        common.check_choice("MODEL", self.model, MODELS)
        fm = self.spec.feature_map
        if not self.fast_weights:
            for flag, given in (("--attn-norm", self.attn_norm is not None), ("--carry", self.carry)):
                if given:
                    raise RecipeError(f"{flag} needs a fast weight model (the transformer has no fast weights); "
                                      f"valid models: {', '.join(m for m in MODELS if m != 'transformer')}")
        if self.carry and fm == "favor":
            raise RecipeError("--carry does not work with performer / performer-delta: FAVOR+ redraws its random "
                              "features at every training forward, so a carried fast weight would be read with other "
                              "features than it was written with (the paper's Table 4 has linear and delta only)")
        if self.favor_m is not None and (fm != "favor" or self.favor_m < 1):
            raise RecipeError(f"--favor-features M (an integer >= 1) is for performer / performer-delta, "
                              f"not {self.model} (got {self.favor_m})")
        if self.dpfp_nu is not None and (fm != "dpfp" or self.dpfp_nu < 1):
            raise RecipeError(f"--dpfp-nu N (an integer >= 1) is for dpfp / dpfp-delta, not {self.model} "
                              f"(got {self.dpfp_nu})")
        return self

    def model_flags(self) -> List[str]:
        """The fairseq flags of the architecture and the fast weight attention."""
        flags = ["--arch", self.cfg.arch, *self.cfg.arch_flags,
                 *presets.lmtool_flags(self.spec.feature_map, self.spec.update_rule,
                                       attn_norm=self.effective_attn_norm, m=self.m, nu=self.nu)]
        if not self.pos:
            flags.append("--no-token-positional-embeddings")
        return flags


# The paper's perplexities (valid, test). Table 2: limited context (sliding window), pos
# enc on, each model's own normalisation, Performer m = 8 (small) / 16 (medium).
PAPER_TABLE2 = {
    ("small", "transformer"): (33.0, 34.1), ("medium", "transformer"): (27.9, 29.6),
    ("small", "linear"): (37.1, 38.3), ("medium", "linear"): (31.1, 33.0),
    ("small", "delta"): (34.1, 35.5), ("medium", "delta"): (29.7, 31.5),
    ("small", "performer"): (39.0, 39.6), ("medium", "performer"): (32.2, 33.8),
    ("small", "performer-delta"): (36.1, 37.2), ("medium", "performer-delta"): (30.0, 31.8),
}
# Table 3: Delta Net, medium; (positional encoding, attention normalisation).
PAPER_TABLE3 = {(True, True): (30.4, 32.1), (False, True): (29.2, 31.2),
                (True, False): (29.7, 31.5), (False, False): (28.1, 31.1)}
# Table 4: medium, trained and evaluated with the state carried (params M, state M, valid, test).
PAPER_TABLE4 = {"linear": ("89.8", "0.13", ">260", ">260"), "delta": ("89.9", "0.13", "27.8", "29.4")}
PAPER_TABLE4_TXL = (("Transformer-XL", "90.9", "0.13", "65.7", "65.5"),
                    ("Transformer-XL", "90.9", "1.05", "29.3", "30.1"),
                    ("Transformer-XL", "90.9", "2.10", "26.4", "27.4"),
                    ("Transformer-XL", "90.9", "6.29", "24.6", "25.5"))
# Table 5 (Appendix D.3): small, Performer m = 16, DPFP nu = 1 (d_dot = 256 over 8 heads).
PAPER_TABLE5 = {"transformer": (33.0, 34.1), "performer": (38.0, 38.8), "performer-delta": (36.0, 37.0),
                "dpfp": (37.7, 38.8), "dpfp-delta": (33.9, 35.0)}


# One command per row of Tables 2-5 (arguments of train.sh / evaluate.sh), for the README
# and the tests: (table, row, arguments).
PAPER_COMMANDS = [
    *[(2, f"{c} {MODELS[m].label}", [c, m]) for c in ("small", "medium")
      for m in ("transformer", "linear", "delta", "performer", "performer-delta")],
    (3, "pos. enc. yes, attn. norm. yes", ["medium", "delta", "--attn-norm", "on"]),
    (3, "pos. enc. no, attn. norm. yes", ["medium", "delta", "--pos", "off", "--attn-norm", "on"]),
    (3, "pos. enc. yes, attn. norm. no", ["medium", "delta"]),
    (3, "pos. enc. no, attn. norm. no", ["medium", "delta", "--pos", "off"]),
    (4, "Linear Transformer", ["medium", "linear", "--carry"]),
    (4, "Delta Network", ["medium", "delta", "--carry"]),
    (5, "Transformer", ["small", "transformer"]),
    (5, "Performer (m = 16), sum", ["small", "performer", "--favor-features", "16"]),
    (5, "Performer (m = 16), delta", ["small", "performer-delta", "--favor-features", "16"]),
    (5, "DPFP (nu = 1), sum", ["small", "dpfp"]),
    (5, "DPFP (nu = 1), delta", ["small", "dpfp-delta"]),
]


def paper_rows(s: Setting) -> List[Tuple[int, Tuple]]:
    """[(table, paper numbers)] for every table of the paper that has this run as a row."""
    rows = []
    if s.carry:
        if s.config == "medium" and s.model in PAPER_TABLE4 and not s.pos and s.effective_attn_norm == s.default_attn_norm \
                and s.m is None and s.nu is None:
            rows.append((4, PAPER_TABLE4[s.model]))
        return rows
    own_norm = s.effective_attn_norm == s.spec.attn_norm if s.fast_weights else True
    if (s.config, s.model) in PAPER_TABLE2 and s.pos and own_norm and s.m == (s.cfg.favor_m if s.m else None):
        rows.append((2, PAPER_TABLE2[(s.config, s.model)]))
    if s.config == "medium" and s.model == "delta":
        rows.append((3, PAPER_TABLE3[(s.pos, s.effective_attn_norm)]))
    if s.config == "small" and s.model in PAPER_TABLE5 and s.pos and own_norm \
            and s.m in (None, 16) and s.nu in (None, 1):
        rows.append((5, PAPER_TABLE5[s.model]))
    return rows
