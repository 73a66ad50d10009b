"""The ``--fwp-*`` options shared by every fairseq-fwp model (one dataclass, one parser)."""

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Tuple

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.utils import safe_getattr

FEATURE_MAPS = ("softmax", "linear", "favor", "dpfp")
UPDATE_RULES = ("sum", "delta")
ATTENTIONS = ("encoder_self", "decoder_self", "cross")


@dataclass
class FwpAttentionConfig(FairseqDataclass):
    """Which fast weight attention replaces fairseq's softmax attention (paper Sec. 3-5)."""

    fwp_feature_map: ChoiceEnum(FEATURE_MAPS) = field(
        default="linear",
        metadata={
            "help": "feature map phi of the linearised attention (Sec. 5): "
            "softmax = fairseq's standard attention (baseline); linear = elu(x)+1 "
            "(Katharopoulos et al., d_dot = d_key); favor = FAVOR+ random features "
            "(Eq. 31-32, d_dot = 2m); dpfp = deterministic parameter-free projection "
            "(Eq. 37, d_dot = 2*nu*d_key)"
        },
    )
    fwp_update_rule: ChoiceEnum(UPDATE_RULES) = field(
        default="sum",
        metadata={
            "help": "fast weight update rule: sum = purely additive outer products "
            "(linear Transformer, Eq. 17); delta = delta rule with a learned write "
            "strength beta = sigmoid(W_beta x) per head and position (Eq. 20-25)"
        },
    )
    fwp_sum_norm: bool = field(
        default=False,
        metadata={"help": "sum normalisation phi(x)/sum_j phi(x)_j of keys and queries (Eq. 29)"},
    )
    fwp_attn_norm: bool = field(
        default=False,
        metadata={
            "help": "attention normalisation: divide reads by z.phi(q) with z = sum of "
            "phi(k) (Eq. 18-19; for the delta rule also the retrieved value, Eq. 26-28)"
        },
    )
    fwp_dpfp_nu: int = field(
        default=1, metadata={"help": "DPFP nu >= 1: number of rolls, d_dot = 2*nu*d_key (Eq. 37)"}
    )
    fwp_favor_features: int = field(
        default=64,
        metadata={"help": "FAVOR+ number of random features m >= 1, d_dot = 2m (Eq. 31-32)"},
    )
    fwp_replace: str = field(
        default=",".join(ATTENTIONS),
        metadata={
            "help": "comma-separated attentions that use the fast weight attention: any "
            "of encoder_self, decoder_self, cross (the others stay softmax); "
            "language models only have decoder_self"
        },
    )

    @classmethod
    def from_args(cls, args) -> "FwpAttentionConfig":
        """Read the ``fwp_*`` options from a Namespace/DictConfig/TransformerConfig and validate them."""
        cfg = cls()
        for f in fields(cls):
            value = safe_getattr(args, f.name, None)
            if value is not None:
                setattr(cfg, f.name, value)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the flag for any invalid setting."""
        fm = str(self.fwp_feature_map)
        if fm not in FEATURE_MAPS:
            raise ValueError(f"--fwp-feature-map: unknown feature map {fm!r}; valid: {', '.join(FEATURE_MAPS)}")
        rule = str(self.fwp_update_rule)
        if rule not in UPDATE_RULES:
            raise ValueError(f"--fwp-update-rule: unknown update rule {rule!r}; valid: {', '.join(UPDATE_RULES)}")
        if fm == "softmax" and rule != "sum":
            raise ValueError(
                "--fwp-update-rule delta needs a linearised attention: --fwp-feature-map softmax "
                "has no fast weights; use linear, favor or dpfp"
            )
        if int(self.fwp_dpfp_nu) < 1:
            raise ValueError(f"--fwp-dpfp-nu must be an integer >= 1 (d_dot = 2*nu*d_key), got {self.fwp_dpfp_nu}")
        if int(self.fwp_favor_features) < 1:
            raise ValueError(
                f"--fwp-favor-features must be an integer >= 1 (m random features, d_dot = 2m), got {self.fwp_favor_features}"
            )
        self.replaced_attentions()

    def replaced_attentions(self) -> Tuple[str, ...]:
        parts = tuple(p.strip() for p in str(self.fwp_replace).split(",") if p.strip())
        bad = [p for p in parts if p not in ATTENTIONS]
        if bad:
            raise ValueError(
                f"--fwp-replace: unknown attention(s) {', '.join(bad)}; valid: comma-separated "
                f"subset of {', '.join(ATTENTIONS)}"
            )
        return parts

    def replaces(self, which: str) -> bool:
        """True when attention ``which`` (encoder_self, decoder_self, cross) is a fast weight one."""
        return str(self.fwp_feature_map) != "softmax" and which in self.replaced_attentions()

    def fill_namespace(self, args) -> None:
        """Write the resolved values back so that checkpoints store them explicitly."""
        for f in fields(self):
            value = getattr(self, f.name)
            setattr(args, f.name, str(value) if isinstance(value, Enum) else value)
